"""``model.init``: continue pre-training from published weights instead of a random start.

``read_start`` reads the source (``dmjd.models.sources.load_source``) before a run writes anything,
``config_for_source`` takes the architecture from it (the config may fix the size, and must then
agree), and ``load_start_weights`` loads what has a counterpart into the built model: the encoder
(position embedding resampled to the run's grid, patch embedding adapted to its channels), the
masked prediction branch where the source has a decoder of the same shapes; the rest (the visible
distillation branch, a new decoder, a prediction layer for another target) starts fresh. Every
choice comes back as a start-up line.
"""

from __future__ import annotations

from typing import cast

from torch import Tensor, nn

from dmjd.config import Config, ConfigError
from dmjd.models import DMJDModel
from dmjd.models.sources import LoadedSource, fit_encoder_weights, load_matching, load_source

SMALL_DATA = 5000  # images: below this, a fresh start rarely beats a pre-trained encoder
_FIXED = ("embed_dim", "depth", "num_heads")
_WORDS = {
    "embed_dim": ("wider", "narrower"),
    "depth": ("deeper", "shallower"),
    "num_heads": ("with more heads", "with fewer heads"),
}


def read_start(cfg: Config) -> LoadedSource | None:
    """The weights ``model.init`` names, read and checked (None without ``model.init``).

    Raises:
        CheckpointError: a source that cannot be read (one line naming it and why).
    """
    return None if cfg.model.init is None else load_source(cfg.model.init)


def config_for_source(cfg: Config, source: LoadedSource) -> Config:
    """``cfg`` with the source's architecture: encoder kind, patch, width, depth, heads (ConViT: its
    size and MLP ratios), the decoder's sizes when the source has one; the image side stays the
    config's, rounded up to a multiple of the source's patch.

    Raises:
        ConfigError: the config fixes a size (``model.embed_dim`` / ``depth`` / ``num_heads``) other
            than the source's, or a ViT MLP ratio other than 4.
    """
    a, m = source.arch, cfg.model
    for key in _FIXED:
        given, theirs = getattr(m, key), getattr(a, key)
        if given is not None and given != theirs:
            what = _WORDS[key][0 if theirs > given else 1]
            raise ConfigError(f"model.init={source.source}: its encoder ({a.describe()}) is {what} than the "
                              f"model.{key}={given} the config fixes; give model.{key}=null to take the source's")  # fmt: skip
    if a.arch == "vit" and a.mlp_ratio != 4.0:
        raise ConfigError(f"model.init={source.source}: MLP ratio {a.mlp_ratio:g}; dmjd's ViT has 4")
    side = -(-m.img_size // a.patch_size) * a.patch_size
    update: dict[str, object] = {"arch": a.arch, "patch_size": a.patch_size, "img_size": side, "embed_dim": a.embed_dim,
                                 "depth": a.depth, "num_heads": a.num_heads}  # fmt: skip
    if a.arch == "convit":
        update |= {"size": a.convit_size, "mlp_ratios": a.mlp_ratios, "embed_dim": None, "depth": None}
    if a.decoder is not None:
        d = a.decoder
        update |= {
            "decoder_dim": d.dim,
            "decoder_depth": d.depth,
            "decoder_heads": d.num_heads,
            "decoder_mlp_ratio": d.mlp_ratio,
        }
    data = cfg.model_dump(mode="json")
    data["model"].update(update)
    return Config.model_validate(data)


def load_start_weights(model: DMJDModel, source: LoadedSource, cfg: Config) -> list[str]:
    """Load the source into ``model`` (built from ``config_for_source``'s config); the start-up lines
    saying what was loaded, what starts fresh and what was skipped, with why.

    Raises:
        CheckpointError: encoder weights that do not fit (which keys differ).
    """
    a, m = source.arch, cfg.model
    load_matching(model.encoder, fit_encoder_weights(source.encoder, a, m.img_size, m.in_chans), source.source)
    adapted = []
    if m.img_size != a.img_size:
        adapted.append(
            f"position embedding resampled from {a.img_size // a.patch_size}^2 to {m.img_size // a.patch_size}^2 tokens"
        )
    if m.in_chans != a.in_chans:
        adapted.append(f"patch embedding adapted from {a.in_chans} to {m.in_chans} channels")
    lines = [f"dmjd: model.init: {source.kind} {source.source}: {a.describe()}",
             f"dmjd:   loaded: the encoder ({len(source.encoder)} tensors{'; ' if adapted else ''}{'; '.join(adapted)})"]  # fmt: skip
    lines += _load_decoder(model, source)
    if model.vdb is not None:
        lines.append("dmjd:   fresh: the visible distillation branch (no counterpart in the source)")
    return lines + [f"dmjd:   note: {note}" for note in source.notes]


def _load_decoder(model: DMJDModel, source: LoadedSource) -> list[str]:
    """Load the source's decoder tensors whose shapes match the masked prediction branch's."""
    if source.decoder is None:
        return ["dmjd:   fresh: the masked prediction branch (the source has no decoder)"]
    branch = cast(nn.Module, model.mpb)
    own = branch.state_dict()
    fits: dict[str, Tensor] = {k: v for k, v in source.decoder.items() if k in own and own[k].shape == v.shape}
    branch.load_state_dict({**own, **fits})
    fresh = sorted(own.keys() - fits.keys())
    lines = [f"dmjd:   loaded: the masked prediction branch ({len(fits)} of {len(own)} tensors)"]
    if fresh:
        why = (f"the source predicts {source.decoder['pred.weight'].shape[0]} values per patch, this run's target "
               f"{own['pred.weight'].shape[0]}" if "pred.weight" in fresh and "pred.weight" in source.decoder
               else "no tensor of that shape in the source")  # fmt: skip
        lines.append(f"dmjd:   fresh: {', '.join(fresh[:4])}{', ...' if len(fresh) > 4 else ''} ({why})")
    skipped = sorted(source.decoder.keys() - own.keys())
    if skipped:
        lines.append(f"dmjd:   skipped from the source: {', '.join(skipped[:4])}{', ...' if len(skipped) > 4 else ''} "
                     "(no counterpart in this run's branch)")  # fmt: skip
    return lines


def small_data_note(cfg: Config, num_images: int) -> str | None:
    """The start-up line of a fresh run on few images without ``model.init``, else None."""
    if cfg.model.init is not None or num_images > SMALL_DATA:
        return None
    return (f"dmjd: note: pre-training from scratch on {num_images:,} images rarely beats a pre-trained encoder; "
            "to continue from published weights give model.init=SOURCE (an MAE / timm / Hugging Face checkpoint, "
            "timm:MODEL_NAME, or a dmjd run; docs/evaluation.md)")  # fmt: skip
