"""dmjd side by side with the official DMJD code (mx-mark/DMJD): same weights, images and masks.

The official code is imported from a checkout the user supplies (``--dmjd-dir``; never vendored),
patched at run time like the official MAE code (``dmjd.bench.official_mae.patch_for_current_libraries``)
plus a stand-in ``einops`` when einops is missing (``engine_pretrain`` imports it; nothing here calls
it). The official ``DMJDConViT`` (ConViT-B, HOG, decoder depth 8) is built with its own seeded
initialisation and dmjd's ``dmjd-convit-b`` model receives the same weights: the encoder through
``dmjd.models.convert.official_encoder_weights``, the branches by name here (``branch_weights``: the
two 108-wide output layers reordered from the official HOG layout ``(cell_y, cell_x, bin, channel)``
to dmjd's ``(cell_y, cell_x, channel, bin)``, and the official decoder position embedding copied
into dmjd's fixed one, whose channel order differs).

One batch of seeded photo-like 8-bit images goes through both. The official code draws its masks
in ``forward_encoder``; dmjd replays the same draws (``replay_official_draws`` re-seeds torch and
draws the official noise and permutations in the official order, ``official_scores`` turns them into
dmjd masking scores). Reported, as max abs differences: the masks, the HOG target (``hog_torch`` +
``InstanceWhitening`` + the patch layout of ``engine_pretrain``), the encoder latent, the masked
prediction and visible distillation outputs (official rows reordered to dmjd's token order), each
loss term of the official ``forward_loss`` against dmjd's with ``loss.vis_pairing=official`` and
with the default ``token``; and the learning rate of PRETRAIN.md's arguments on 8 GPUs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import types
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dmjd.bench.environment import device_name, git_commit, now_utc, publish
from dmjd.bench.official_mae import import_checkout
from dmjd.config import load_config
from dmjd.engine.builders import build_dmjd_model, build_masking, build_target, mean_std
from dmjd.engine.optim import peak_lr
from dmjd.losses import dmjd_loss
from dmjd.masking import PATTERNS, DisjointMasking, MaskedViews
from dmjd.models import DMJDModel, MaskedPredictionBranch
from dmjd.models.convert import official_encoder_weights

GRID = 14  # the official code's 14 x 14 token grid (224 px, patch 16)
GPUS = 8
# PRETRAIN.md's ConViT-B command (per GPU; 8 GPUs)
PRETRAIN_ARGS = (
    "--batch_size", "64", "--model", "dmjd_convit_base_patch16_dec8_hog", "--mask_ratio", "0.6",
    "--mask_type", "block", "--pred_type", "hog", "--mim_loss_type", "l2", "--vis_loss_type", "smooth_l1",
    "--epochs", "400", "--warmup_epochs", "20", "--blr", "6e-4", "--weight_decay", "0.05",
)  # fmt: skip
_REPLAY = "official-replay"


def import_official_dmjd(dmjd_dir: str | Path) -> types.SimpleNamespace:
    """``models_dmjd``, ``util.hog_tensor``, ``util.instance_whitening`` and ``main_pretrain`` of a checkout.

    Raises:
        FileNotFoundError: ``dmjd_dir`` holds no ``models_dmjd.py``.
    """
    root = Path(dmjd_dir).resolve()
    if not (root / "models_dmjd.py").is_file():
        raise FileNotFoundError(f"{root} holds no models_dmjd.py: pass a checkout of mx-mark/DMJD as --dmjd-dir")
    if "einops" not in sys.modules:
        try:
            import einops  # noqa: F401
        except ImportError:
            sys.modules["einops"] = types.SimpleNamespace(rearrange=_no_einops)  # type: ignore[assignment]
    models, hog, whitening, main = import_checkout(
        root, ("models_dmjd", "util.hog_tensor", "util.instance_whitening", "main_pretrain")
    )
    return types.SimpleNamespace(models=models, hog=hog, whitening=whitening, main=main)


def _no_einops(*args: Any, **kwargs: Any) -> Any:
    """The stand-in ``einops.rearrange``: the side-by-side run never calls it; a call means einops is needed."""
    raise ImportError("einops is not installed (pip install einops): the stand-in only lets engine_pretrain import")


def official_to_dmjd_dims(x: Tensor) -> Tensor:
    """HOG vectors ``[..., 108]`` from the official layout (cell_y, cell_x, bin, channel) to dmjd's
    (cell_y, cell_x, channel, bin)."""
    return x.unflatten(-1, (2, 2, 9, 3)).transpose(-1, -2).flatten(-4)


def _dmjd_rows() -> Tensor:
    """``perm``: dmjd's HOG dimension ``j`` is the official dimension ``perm[j]``."""
    return official_to_dmjd_dims(torch.arange(108))


def official_hog_target(official: types.SimpleNamespace, crops: Tensor) -> Tensor:
    """The official target of ``engine_pretrain``: ``hog_torch`` on the 0..255 crops, ``InstanceWhitening``
    over the 9 bins, each 16 px patch's 2 x 2 cells as one vector (official layout), ``[B, 196, 108]``."""
    hist = official.hog.hog_torch(crops.float())  # [B, C, 28, 28, 9]
    hist = official.whitening.InstanceWhitening(9)(hist)
    b, c = hist.shape[:2]
    return hist.view(b, c, GRID, 2, GRID, 2, 9).permute(0, 2, 4, 3, 5, 6, 1).reshape(b, GRID * GRID, -1)


def branch_weights(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """dmjd ``DMJDModel`` entries (``mpb.*``, ``vdb.*``) for the official branches of a ``DMJDConViT``
    state dict; the output layers' rows reordered to dmjd's HOG layout."""
    rows = _dmjd_rows()
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith("decoder_blocks."):
            out["mpb.blocks." + key.removeprefix("decoder_blocks.")] = value
        elif key.startswith(("decoder_embed.", "mask_token")):
            out["mpb." + key] = value
        elif key.startswith("decoder_norm."):
            out["mpb.norm." + key.removeprefix("decoder_norm.")] = value
        elif key.startswith("decoder_pred."):
            out["mpb.pred." + key.removeprefix("decoder_pred.")] = value[rows]
        elif key.startswith("proj_embed."):
            out["vdb.projector." + key.removeprefix("proj_embed.")] = value
        elif key.startswith("predictor.0."):
            out["vdb.predictor." + key.removeprefix("predictor.0.")] = value[rows]
    return out


def dmjd_twin(official_model: nn.Module) -> DMJDModel:
    """dmjd's ``dmjd-convit-b`` model holding the official model's weights."""
    cfg = load_config("dmjd-convit-b", ["data.name=embedded", "data.path=null"])
    model = build_dmjd_model(cfg, 108)
    state = official_model.state_dict()
    weights = {f"encoder.{k}": v for k, v in official_encoder_weights(state).items()}
    model.load_state_dict({**weights, **branch_weights(state)})
    with torch.no_grad():
        # dmjd-convit-b builds a MaskedPredictionBranch; the official decoder_pos_embed is a Parameter.
        cast(MaskedPredictionBranch, model.mpb).pos_embed.copy_(cast(Tensor, official_model.decoder_pos_embed))
    return model


def replay_official_draws(seed: int, batch: int, units: int, keep: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """The official masking's random draws after ``torch.manual_seed(seed)``, in its order: the noise
    ``[B, units]``, the permutation of view 1's kept units, that of its removed units."""
    torch.manual_seed(seed)
    noise = torch.rand(batch, units, device=device)
    return noise, torch.randperm(keep, device=device), torch.randperm(units - keep, device=device)


def official_scores(noise: Tensor, perm_kept: Tensor, perm_removed: Tensor, keep: int) -> Tensor:
    """dmjd masking scores ``[B, 2, units]`` (lower = masked first) that reproduce the official two
    views and their ``ids_keep`` order: view 1 ranks the units by noise, moved down by ``keep`` modulo
    the unit count (the removed units first, then the kept ones in ascending noise); view 2 scores a
    kept unit by its place in ``perm_kept`` and a removed one by its place in ``perm_removed``."""
    batch, units = noise.shape
    order = noise.argsort(dim=1)
    ranks = torch.arange(units, device=noise.device).expand(batch, -1)
    view1 = torch.empty_like(order).scatter_(1, order, (ranks - keep) % units)
    place = torch.cat([perm_kept.argsort(), perm_removed.argsort()]).expand(batch, -1)
    view2 = torch.empty_like(order).scatter_(1, order, place)
    return torch.stack([view1, view2], dim=1).float()


@contextmanager
def replayed_pattern(scores: Tensor, block_size: int) -> Iterator[str]:
    """A masking pattern, registered while the context lasts, that returns the given unit scores
    ``[B, 2, units]`` on the token grid (constant on ``block_size`` cells)."""
    cells = GRID // block_size
    tokens = scores.flatten(0, 1).view(-1, cells, 1, cells, 1).expand(-1, -1, block_size, -1, block_size)
    tokens = tokens.reshape(-1, GRID * GRID)

    def fixed(batch_size: int, grid_size: tuple[int, int], *, generator: Any = None, device: Any = None,
              block_size: int = 1) -> Tensor:  # fmt: skip
        return tokens[:batch_size]

    PATTERNS[_REPLAY] = fixed
    try:
        yield _REPLAY
    finally:
        del PATTERNS[_REPLAY]


def photo_like_images(batch: int, seed: int, size: int = 224) -> Tensor:
    """``uint8[B, 3, size, size]``: a seeded 28 x 28 random field, bicubic-upsampled (smooth areas and edges)."""
    low = torch.rand(batch, 3, 28, 28, generator=torch.Generator().manual_seed(seed))
    return (F.interpolate(low, size=(size, size), mode="bicubic").clamp(0, 1) * 255).round().to(torch.uint8)


def _view_major_to_image_major(x: Tensor, batch: int) -> Tensor:
    """Official rows ``k*B + b`` (the two views concatenated) -> dmjd rows ``b*K + k``."""
    return x.unflatten(0, (2, batch)).transpose(0, 1).flatten(0, 1)


def _ascending_visible(x: Tensor, mask: Tensor, ids_restore: Tensor) -> Tensor:
    """Official per-view rows in ``ids_keep`` (draw) order -> ascending token order."""
    n_vis = x.shape[1]
    visible = torch.argsort(mask, dim=1, stable=True)[:, :n_vis]  # ascending visible ids
    return x.gather(1, ids_restore.gather(1, visible).unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def official_lr(official: types.SimpleNamespace, gpus: int = GPUS) -> float:
    """``main_pretrain.py``'s lr on PRETRAIN.md's arguments (parsed by its own parser, defaults included):
    ``blr * batch * accum_iter * world * pred_ratio / mask_ratio / 256``."""
    args = official.main.get_args_parser().parse_args(list(PRETRAIN_ARGS))
    eff_batch = args.batch_size * args.accum_iter * gpus * (args.pred_ratio / args.mask_ratio)
    return args.blr * eff_batch / 256 if args.lr is None else args.lr


def compare(dmjd_dir: str | Path, batch: int, seed: int, device: str, mask_type: str) -> dict[str, Any]:
    """Run the official DMJD code and dmjd on the same weights, images and masks; max abs differences.

    Raises:
        FileNotFoundError: ``dmjd_dir`` is not a checkout of mx-mark/DMJD.
    """
    official = import_official_dmjd(dmjd_dir)
    dev = torch.device(device)
    block, mask_ratio = (2, 0.6) if mask_type == "block" else (1, 0.75)
    torch.manual_seed(seed)
    off_model = official.models.dmjd_convit_base_patch16_dec8_hog(decoder_pred_dim=108).to(dev).eval()
    ours = dmjd_twin(off_model).to(dev).eval()
    crops = photo_like_images(batch, seed).to(dev)
    mean, std = (torch.tensor(v, device=dev).view(1, -1, 1, 1) for v in mean_std(load_config("dmjd-convit-b", [])))
    x = (crops.float() / 255 - mean) / std

    units = (GRID // block) ** 2
    keep = int(units * (1 - mask_ratio))
    with torch.no_grad():
        torch.manual_seed(seed + 1)
        latent, mask, ids_restore = off_model.forward_encoder(x, mask_ratio, mask_type)
        pred, pred_vis = off_model.forward_decoder(latent, ids_restore)
        target_off = official_hog_target(official, crops)
        loss_off = float(off_model.forward_loss(crops, (pred, pred_vis), target_off, mask, "l2", "smooth_l1", 1.0))
        mim_off = float(off_model.forward_loss(crops, (pred, pred_vis), target_off, mask, "l2", "smooth_l1", 0.0))

        scores = official_scores(*replay_official_draws(seed + 1, batch, units, keep, dev), keep)
        with replayed_pattern(scores, block) as pattern:
            masking = DisjointMasking((GRID, GRID), mask_ratio, 2, 1.0, pattern, block)
            dmjd_mask, drawn = masking.sample(batch, device=dev, with_order=True)
            assert drawn is not None  # with_order=True
        views = MaskedViews.from_mask(dmjd_mask, masking.num_masked, drawn)
        target = build_target(load_config("dmjd-convit-b", [])).to(dev)(crops.float() / 255)
        out = ours(x, views)
        terms = {p: dmjd_loss(out, target, views, vis_pairing=p) for p in ("official", "token")}

    mask_rows = _view_major_to_image_major(mask, batch)
    masked = views.ids_masked.flatten(0, 1)
    pred_masked_off = official_to_dmjd_dims(_view_major_to_image_major(pred, batch))
    pred_masked_off = pred_masked_off.gather(1, masked.unsqueeze(-1).expand(-1, -1, 108))

    def visible_rows(t: Tensor) -> Tensor:
        return _view_major_to_image_major(_ascending_visible(t, mask, ids_restore), batch)

    def diff(a: Tensor | float, b: Tensor | float) -> float:
        return float((torch.as_tensor(a) - torch.as_tensor(b)).abs().max())

    vis_off = loss_off - mim_off
    differences = {
        "mask": diff(mask_rows, dmjd_mask.flatten(0, 1).float()),
        "hog_target": diff(official_to_dmjd_dims(target_off), target),
        "latent": diff(visible_rows(latent), out.latent),
        "pred_masked": diff(pred_masked_off, out.pred_masked),
        "pred_visible": diff(official_to_dmjd_dims(visible_rows(pred_vis)), out.pred_visible),
        "loss_mim": diff(mim_off, terms["official"]["loss_mim"]),
        "loss_vis (vis_pairing=official)": diff(vis_off, terms["official"]["loss_vis"]),
        "loss_vis (vis_pairing=token)": diff(vis_off, terms["token"]["loss_vis"]),
        "loss (vis_pairing=official)": diff(loss_off, terms["official"]["loss"]),
    }
    dmjd_cfg = load_config("dmjd-convit-b", [])
    lrs = {"official": official_lr(official), "dmjd": peak_lr(dmjd_cfg.optim, build_masking(dmjd_cfg), 64 * GPUS)}
    return {
        "benchmark": "official DMJD vs dmjd, same weights, images and masks", "mask_type": mask_type,
        "mask_ratio": mask_ratio, "batch_size": batch, "seed": seed, "device": device_name(dev), "date": now_utc(),
        "commit": git_commit(), "dmjd_dir": str(dmjd_dir), "max_abs_difference": differences,
        "official_values": {"loss_mim": mim_off, "loss_vis": vis_off, "loss": loss_off},
        "dmjd_values": {p: {k: float(v) for k, v in t.items()} for p, t in terms.items()},
        "visible_tokens_paired_with_another_target": float((drawn != views.ids_keep).float().mean()),
        "lr_8_gpus": lrs, "lr_difference": abs(lrs["official"] - lrs["dmjd"]),
    }  # fmt: skip


def format_table(result: dict[str, Any]) -> str:
    """Markdown table of the max abs differences, then the loss values and the learning rates."""
    lines = [
        f"Official DMJD vs dmjd: ConViT-B, {result['mask_type']} masking {result['mask_ratio']}, batch "
        f"{result['batch_size']}, seed {result['seed']}, on {result['device']}",
        "",
        "| quantity | max abs difference |",
        "|---|---|",
        *(f"| {name} | {value:.3g} |" for name, value in result["max_abs_difference"].items()),
        f"| lr on 8 GPUs (official {result['lr_8_gpus']['official']:.6g}, dmjd {result['lr_8_gpus']['dmjd']:.6g}) "
        f"| {result['lr_difference']:.3g} |",
        "",
        f"Official loss terms: {', '.join(f'{k} {v:.6f}' for k, v in result['official_values'].items())}; dmjd: "
        + "; ".join(
            f"vis_pairing={p}: " + ", ".join(f"{k} {v:.6f}" for k, v in t.items()) for p, t in result["dmjd_values"].items()
        )
        + f". Visible tokens the official pairing gives another token's target: "
        f"{100 * result['visible_tokens_paired_with_another_target']:.1f} %.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python benchmarks/official_dmjd.py --dmjd-dir PATH [--batch 2] [--mask-type block] [--device cpu]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dmjd-dir", required=True, help="a checkout of mx-mark/DMJD")
    parser.add_argument("--batch", type=int, default=2, help="unique images (each gives two views)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mask-type", choices=["block", "rand"], default="block",
                        help="block 0.6 (PRETRAIN.md) or rand 0.75")  # fmt: skip
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default=None, help="write OUTPUT.json and OUTPUT.md")
    args = parser.parse_args(argv)
    result = compare(args.dmjd_dir, args.batch, args.seed, args.device, args.mask_type)
    result["command"] = shlex.join(sys.argv if argv is None else ["official_dmjd", *argv])
    publish(result, format_table(result), args.output)
    print(json.dumps(result))
    return 0
