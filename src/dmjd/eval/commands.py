"""``dmjd knn | linprobe | finetune | tsne | visualize | plot | export``: thin layers over ``dmjd.eval``.

Every command reads a pre-training checkpoint (``--checkpoint``; the feature evaluations also take
``--timm-model NAME`` for comparison), evaluates on the labelled train/test splits of the data set
named in the checkpoint's config unless ``data.*`` overrides say otherwise, and writes into its
output folder (``--output-dir``, default: the checkpoint's folder), which is checked to be writable
before any work starts. It writes ``<command>.json``, prints the same JSON as its last line, and
appends a record (protocol, settings, checkpoint and its epoch, date, files written) to the run's
``evals.jsonl``, so no result replaces another. Problems with what was given raise ``InputError``
(exit code 2 in ``main``). ``--checkpoint`` may name a run folder (its newest checkpoint). A probe or
fine-tuning no better than always answering the most frequent test class prints one
``dmjd: WARNING: ...`` line. Torch and the protocols load when a command runs, so ``--help`` is quick.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sized
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from dmjd.errors import InputError
from dmjd.eval.settings import RECIPES, FinetuneSettings, ProbeSettings, SmallFinetuneSettings

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn
    from torch.utils.data import Dataset

    from dmjd.config import Config
    from dmjd.eval.features import Pool
    from dmjd.eval.loading import InputSpec


CHECKPOINT_HELP = (
    "dmjd pre-training checkpoint or run folder; or published weights (with --output-dir and data.path=...): an "
    "official MAE / ConvMAE / DMJD checkpoint, timm ViT weights or timm:MODEL_NAME, a Hugging Face ViTMAE folder, "
    "a dmjd export"
)


@dataclass
class Source:
    """An encoder to evaluate, its input, the data to evaluate on and where results go.

    ``output_dir`` receives the command's files, ``run_dir`` the ``evals.jsonl`` record, and
    ``position`` (epoch, step, ETE of the checkpoint) places the result on the run's curves.
    ``num_workers`` is the data loaders' worker count: ``data.num_workers``, at most one per core
    this process may use (more only contend, and PyTorch warns).
    """

    encoder: nn.Module
    spec: InputSpec
    cfg: Config
    output_dir: Path
    run_dir: Path
    device: torch.device
    name: dict[str, str]
    pool: Pool
    position: dict[str, Any]
    is_main: bool = True
    num_workers: int = 0


def emit(result: dict[str, Any], folder: Path, name: str) -> dict[str, Any]:
    """Write ``result`` (floats to 6 significant digits) to ``folder/<name>.json``, print it as one
    JSON line and return it."""
    from dmjd.engine.metrics import round_floats
    from dmjd.io.atomic import atomic_write

    result = round_floats(result)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / f"{name}.json", json.dumps(result, indent=2) + "\n")
    print(json.dumps(result), flush=True)
    return result


def record_evaluation(result: dict[str, Any], run_dir: Path, position: dict[str, Any], files: list[Path]) -> None:
    """Append ``result`` to ``run_dir/evals.jsonl`` with the checkpoint's position, the date and
    the files written (relative to that folder; ``--overwrite`` of a run deletes those inside it).

    When ``result["checkpoint"]`` lies in another run folder (one with ``metrics.jsonl``: the
    results went elsewhere with ``--output-dir``), the record is also appended to that run's
    ``evals.jsonl``, so that ``dmjd plot RUN`` shows it; a run folder that cannot be written is
    named in one line on stderr and skipped.
    """
    from dmjd.engine.metrics import append_eval

    date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    home = Path(result["checkpoint"]).parent if result.get("checkpoint") else None
    runs = [Path(run_dir)]
    if home is not None and (home / "metrics.jsonl").is_file() and home.resolve() != Path(run_dir).resolve():
        runs.append(home)
    for folder in runs:
        names = [os.path.relpath(f, folder) for f in files]
        try:
            append_eval(folder, {**result, **position, "date": date, "files": names})
        except OSError as err:
            if folder == runs[0]:
                raise
            print(f"dmjd: warning: not recorded in {folder / 'evals.jsonl'}: {err.strerror or err}", file=sys.stderr)


def writable_output(args: argparse.Namespace, default_sub: str | None = None) -> tuple[Path, Path]:
    """``(output folder, run folder)`` of a command, the output folder created and checked writable.

    The output folder is ``--output-dir``, else the checkpoint's folder (its ``default_sub`` folder
    when given); the run folder (``evals.jsonl``) is ``--output-dir``, else the checkpoint's folder.

    Raises:
        InputError: ``--timm-model``, a hub folder or ``timm:NAME`` as ``--checkpoint`` without ``--output-dir``
            (a file's results go to its folder).
        OutputDirError: the output folder cannot be written.
    """
    from dmjd.engine.run_dir import check_writable

    if args.output_dir:
        folder = Path(args.output_dir)
        return check_writable(folder), folder
    if not getattr(args, "checkpoint", None):
        raise InputError("--timm-model needs --output-dir (where its results go)")
    if (Path(args.checkpoint) / "config.json").is_file() or str(args.checkpoint).startswith("timm:"):
        raise InputError(f"--checkpoint {args.checkpoint} is not a dmjd run: give --output-dir (where its results go)")
    run_dir = Path(args.checkpoint).parent
    folder = run_dir / default_sub if default_sub else run_dir
    check_writable(run_dir)
    return check_writable(folder), run_dir


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def _add_checkpoint(
    p: argparse.ArgumentParser, timm_ok: bool, output_help: str = "where results go (default: the checkpoint's folder)"
) -> None:
    if timm_ok:
        group = p.add_mutually_exclusive_group(required=True)
        group.add_argument("--checkpoint", help=CHECKPOINT_HELP)
        group.add_argument("--timm-model", help="or a timm model name with its pre-trained weights, to compare")
    else:
        p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--output-dir", default=None, help=output_help)
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    p.add_argument(
        "overrides", nargs="*", metavar="data.KEY=VALUE",
        help="evaluate on other data, e.g. data.path=/photos (kind inferred) or data.name=cifar10 data.path=/data",
    )  # fmt: skip


def _add_max_images(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-images", type=_positive(int), default=None, help="seeded random subset per split (default: all)")


def _add_features(p: argparse.ArgumentParser) -> None:
    _add_max_images(p)
    p.add_argument("--pool", choices=("cls", "avg", "avg_fc_norm"), default=None,
                   help="class token, mean of patch tokens, or that mean through a fresh LayerNorm "
                   "(default: cls when the encoder has one, avg_fc_norm for a ConViT)")  # fmt: skip
    p.add_argument("--feature-batch-size", type=_positive(int), default=256, help="images per feature-extraction batch")


def _add_field(group: argparse._ArgumentGroup, f: dataclasses.Field, default: Any, help_text: str) -> None:
    """The option ``--<field-name>`` of a settings dataclass field (type and choices from its metadata)."""
    extra = {"choices": f.metadata["choices"]} if "choices" in f.metadata else {}
    group.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=default,
                       type=f.metadata.get("type", type(f.default)), help=help_text, **extra)  # fmt: skip


def _add_settings(p: argparse.ArgumentParser, cls: type) -> None:
    """One option per field of a settings dataclass; defaults and help come from the dataclass."""
    group = p.add_argument_group(f"{cls.__name__.removesuffix('Settings').lower()} settings")
    for f in dataclasses.fields(cls):
        _add_field(group, f, f.default, f.metadata["help"] + " (default: %(default)s)")


def _add_recipe_settings(p: argparse.ArgumentParser) -> None:
    """One option per field of any fine-tuning recipe, None unless given: each recipe fills in its
    own defaults (``recipe_settings``), named in the help."""
    group = p.add_argument_group("fine-tuning settings (defaults per recipe)")
    per_recipe = {name: {f.name: f for f in dataclasses.fields(cls)} for name, cls in RECIPES.items()}
    names = dict.fromkeys(n for recipe_fields in per_recipe.values() for n in recipe_fields)
    for name in names:
        having = {recipe: fs[name] for recipe, fs in per_recipe.items() if name in fs}
        f = next(iter(having.values()))
        if len(having) == 1:
            note = f"{next(iter(having))} only, default: {f.default}"
        else:
            note = "default: " + ", ".join(f"{recipe} {field.default}" for recipe, field in having.items())
        _add_field(group, f, None, f"{f.metadata['help']} ({note})")


def _given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The fine-tuning settings given on the command line (``_add_recipe_settings``' options not None)."""
    names = {f.name for cls in RECIPES.values() for f in dataclasses.fields(cls)}
    return {name: getattr(args, name) for name in sorted(names) if getattr(args, name) is not None}


def _settings(cls: type, args: argparse.Namespace) -> Any:
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def load_source(args: argparse.Namespace, default_sub: str | None = None) -> Source:
    """Check the output folder, then load ``--checkpoint`` or ``--timm-model`` and resolve the
    data, device and pooling.

    Under torchrun this joins the process group; on GPUs each process takes ``cuda:LOCAL_RANK``.

    Raises:
        InputError: ``--timm-model`` without ``--output-dir``, an unwritable output folder, an
            unusable checkpoint or data override.
    """
    import torch

    from dmjd.engine.distributed import init_distributed
    from dmjd.engine.runtime import resolve_device
    from dmjd.eval.features import default_pool
    from dmjd.eval.loading import (
        InputSpec,
        checkpoint_position,
        config_with_overrides,
        encoder_from_state,
        load_published_encoder,
        load_timm_encoder,
    )
    from dmjd.eval.monitor import available_cores
    from dmjd.io.checkpoint import PRETRAINING, load_checkpoint
    from dmjd.models.sources import is_dmjd_run

    out, run_dir = writable_output(args, default_sub)
    device = resolve_device(args.device)
    info = init_distributed(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    if getattr(args, "timm_model", None):
        encoder = load_timm_encoder(args.timm_model, pretrained=True, device=device)
        cfg = config_with_overrides({}, args.overrides)
        spec, name, position = InputSpec.from_timm(encoder), {"timm_model": args.timm_model}, {}
    elif is_dmjd_run(args.checkpoint):
        state = load_checkpoint(args.checkpoint, expected=PRETRAINING)
        encoder, cfg = encoder_from_state(state, args.checkpoint, device)
        position = checkpoint_position(state, cfg)
        cfg = config_with_overrides(cfg.model_dump(mode="json"), args.overrides)
        spec, name = InputSpec.from_config(cfg), {"checkpoint": str(args.checkpoint)}
    else:
        encoder, spec, loaded = load_published_encoder(args.checkpoint, device)
        if loaded.config is None and not any(item.startswith("data.") for item in args.overrides):
            raise InputError(f"{args.checkpoint} names no data set to evaluate on: give data.path=FOLDER (or data.name=...)")
        cfg = config_with_overrides(loaded.config or {}, args.overrides)
        name, position = {"checkpoint": str(args.checkpoint)}, {}
        if info.is_main:
            print(f"dmjd: {loaded.kind} {args.checkpoint}: {loaded.arch.describe()}", flush=True)
    pool = getattr(args, "pool", None) or default_pool(encoder)
    fits = {"cls": getattr(encoder, "cls_token", None) is not None, "avg_fc_norm": hasattr(encoder, "forward_unfused")}
    if not fits.get(pool, True):
        raise InputError(f"--pool {pool} does not fit this encoder ({type(encoder).__name__}); use --pool avg")
    workers = min(cfg.data.num_workers, available_cores())
    return Source(encoder, spec, cfg, out, run_dir, device, name, pool, position, info.is_main, workers)


def labelled_source_splits(src: Source, train_tf: Any, test_tf: Any, max_images: int | None) -> tuple[Dataset, Dataset]:
    """The labelled train and test splits of the source's data set, each described in a start-up line."""
    from dmjd.data.base import dataset_classes, describe_data
    from dmjd.eval.features import labelled_splits, num_classes

    data = src.cfg.data
    splits = labelled_splits(data.name, data.path, train_tf, test_tf, data.download, max_images)
    if src.is_main:
        for split, ds in zip(("train", "test"), splits, strict=True):
            line = describe_data(data.name, data.path, split, len(cast(Sized, ds)), num_classes(ds), dataset_classes(ds))
            print(f"dmjd: {line}", flush=True)
    return splits


def source_splits(src: Source, args: argparse.Namespace) -> tuple[Dataset, Dataset]:
    """The labelled train and test splits of the source's data set, centre-cropped for its encoder."""
    from dmjd.data import eval_transform

    transform = eval_transform(src.spec.img_size, src.spec.in_chans, background=src.cfg.data.background)
    return labelled_source_splits(src, transform, transform, args.max_images)


def dataset_features(src: Source, dataset: Dataset, args: argparse.Namespace) -> tuple[Tensor, Tensor]:
    """Frozen features ``[N, D]`` and labels ``[N]`` of a data set, with the source's encoder and pool."""
    from dmjd.data import Normalize
    from dmjd.eval.features import extract_features

    normalize = Normalize(src.spec.mean, src.spec.std)
    return extract_features(src.encoder, dataset, args.feature_batch_size, src.device, src.pool, normalize,
                            src.num_workers)  # fmt: skip


def source_features(src: Source, args: argparse.Namespace) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Frozen features and labels of the train and test splits: ``(train_x, train_y, test_x, test_y)``."""
    train, test = source_splits(src, args)
    return (*dataset_features(src, train, args), *dataset_features(src, test, args))


def _describe(src: Source, train_y: Tensor, test_y: Tensor) -> dict[str, Any]:
    return {**src.name, "data": src.cfg.data.name, "data_path": src.cfg.data.path, "pool": src.pool,
            "train_images": len(train_y), "test_images": len(test_y)}  # fmt: skip


def finish(src: Source, result: dict[str, Any], name: str, files: list[Path] | None = None) -> None:
    """On the main process: ``emit`` the result into the output folder and record it in the run's
    ``evals.jsonl`` with the files written (``<name>.json`` and ``files``)."""
    if src.is_main:
        emit(result, src.output_dir, name)
        record_evaluation(result, src.run_dir, src.position, [src.output_dir / f"{name}.json", *(files or [])])


@contextmanager
def chance_warnings_as_lines() -> Iterator[None]:
    """Print every ``ChanceLevelWarning`` as one ``dmjd: WARNING: ...`` line on stderr; other
    warnings show as usual."""
    from dmjd.eval.chance import ChanceLevelWarning

    with warnings.catch_warnings():
        usual = warnings.showwarning

        def show(message: Warning | str, category: type[Warning], *where: Any, **kw: Any) -> None:
            if issubclass(category, ChanceLevelWarning):
                print(f"dmjd: WARNING: {message}", file=sys.stderr, flush=True)
            else:
                usual(message, category, *where, **kw)

        warnings.showwarning = show
        warnings.simplefilter("always", ChanceLevelWarning)
        yield


def eval_command(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A command's ``func``: its ``--checkpoint`` may name a run folder (resolved to the folder's
    newest checkpoint before anything else reads it), and chance-level warnings print as one line.

    Raises:
        CheckpointError: ``--checkpoint`` is a folder with no checkpoint in it.
    """

    @functools.wraps(run)
    def command(args: argparse.Namespace) -> int:
        from dmjd.io.checkpoint import resolve_checkpoint
        from dmjd.models.sources import is_dmjd_run

        if getattr(args, "checkpoint", None) and is_dmjd_run(args.checkpoint):
            args.checkpoint = str(resolve_checkpoint(args.checkpoint))
        with chance_warnings_as_lines():
            return run(args)

    return command


def check_chance(src: Source, top1: float, test_labels: Any, protocol: str, hint: str) -> None:
    """On the main process, warn when ``top1`` is no better than the test split's majority class
    (``dmjd.eval.chance.warn_if_at_chance``)."""
    from dmjd.eval.chance import warn_if_at_chance

    if src.is_main:
        warn_if_at_chance(top1, test_labels, protocol, hint, stacklevel=3)


# ---------------------------------------------------------------------------------------- knn
@eval_command
def _run_knn(args: argparse.Namespace) -> int:
    from dmjd.eval.knn import knn_top1

    src = load_source(args)
    train_x, train_y, test_x, test_y = source_features(src, args)
    top1 = knn_top1(train_x, train_y, test_x, test_y, args.k, args.temperature)
    check_chance(src, top1, test_y, "kNN", "the features separate no class: check the checkpoint, --pool and the data")
    result = {"kind": "knn", "protocol": "weighted-knn", "knn_top1": top1, "k": args.k,
              "temperature": args.temperature, **_describe(src, train_y, test_y)}  # fmt: skip
    finish(src, result, "knn")
    return 0


def _add_knn(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("knn", help="weighted k-NN top-1 on frozen features (DINO protocol)")
    _add_checkpoint(p, timm_ok=True)
    _add_features(p)
    p.add_argument("--k", type=_positive(int), default=20, help="neighbours (default: %(default)s)")
    p.add_argument("--temperature", type=_positive(float), default=0.07,
                   help="vote weight exp(sim / T) (default: %(default)s)")  # fmt: skip
    p.set_defaults(func=_run_knn)


# ----------------------------------------------------------------------------------- linprobe
@eval_command
def _run_linprobe(args: argparse.Namespace) -> int:
    from dmjd.eval.linear_probe import linear_probe, logistic_regression_top1

    settings = None if args.fast else _settings(ProbeSettings, args)
    src = load_source(args)
    train_x, train_y, test_x, test_y = source_features(src, args)
    if settings is None:
        top1 = logistic_regression_top1(train_x, train_y, test_x, test_y, c=args.logreg_c)
        protocol: dict[str, Any] = {"protocol": "logreg", "C": args.logreg_c}
    else:
        top1 = linear_probe(train_x, train_y, test_x, test_y, settings, src.device)
        protocol = {"protocol": "mae", **dataclasses.asdict(settings), "lr": settings.peak_lr(settings.batch_size)}
    check_chance(src, top1, test_y, "linear probe", "compare with dmjd knn on the same features; for the MAE "
                 "protocol try more --epochs or another --blr")  # fmt: skip
    result = {"kind": "linprobe", "linprobe_top1": top1, **protocol, **_describe(src, train_y, test_y)}
    finish(src, result, "linprobe-fast" if args.fast else "linprobe")
    return 0


def _add_linprobe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("linprobe", help="linear probe on frozen features (MAE protocol, or --fast)")
    _add_checkpoint(p, timm_ok=True)
    _add_features(p)
    p.add_argument("--fast", action="store_true",
                   help="logistic regression on standardised features instead (writes linprobe-fast.json)")  # fmt: skip
    p.add_argument("--logreg-c", type=_positive(float), default=1.0,
                   help="inverse L2 strength of --fast (default: %(default)s)")  # fmt: skip
    _add_settings(p, ProbeSettings)
    p.set_defaults(func=_run_linprobe)


# ----------------------------------------------------------------------------------- finetune
def check_recipe_options(recipe: str, args: argparse.Namespace) -> None:
    """Refuse the options that the fine-tuning recipe (``auto`` before its choice) cannot honour.

    Raises:
        InputError: ``--budget`` with ``--epochs`` or with ``mae`` (it runs ``--epochs``);
            ``--resume`` or ``--overwrite`` with ``small`` (it runs in memory and keeps no checkpoint).
    """
    if args.budget is not None and args.epochs is not None:
        raise InputError("--budget and --epochs both set the fine-tuning length; give one")
    if recipe == "mae" and args.budget is not None:
        raise InputError("--budget is for --recipe small; the MAE recipe runs --epochs (default 100)")
    if recipe == "small":
        given = [option for option, value in (("--resume", args.resume), ("--overwrite", args.overwrite)) if value]
        if given:
            raise InputError(f"{', '.join(given)}: --recipe small runs in memory and keeps no checkpoint to "
                             "resume or replace; use --recipe mae for a resumable run")  # fmt: skip


def _run_mae_finetune(
    src: Source, args: argparse.Namespace, settings: FinetuneSettings
) -> tuple[dict[str, Any], FinetuneSettings]:
    """MAE's (ConvMAE's) recipe through ``Finetuner``: its summary and settings."""
    from dmjd.eval.features import dataset_labels, num_classes
    from dmjd.eval.finetune import Finetuner, finetune_transforms

    train_tf, val_tf = finetune_transforms(src.spec, settings, src.cfg.data.background)
    train, val = labelled_source_splits(src, train_tf, val_tf, args.max_images)
    trainer = Finetuner(
        src.encoder, train, val, num_classes(train, val), settings, src.output_dir, src.device,
        num_workers=src.num_workers, resume=args.resume, overwrite=args.overwrite,
    )  # fmt: skip
    summary = trainer.fit()
    check_chance(src, summary["finetune_top1"], dataset_labels(val), "fine-tuning (MAE recipe)",
                 "its regularisers and schedule are made for ImageNet: on small data use --recipe small")  # fmt: skip
    return {**summary, "protocol": "mae-finetune"}, settings


def check_splits_fit_in_memory(src: Source, splits: tuple[Dataset, Dataset]) -> None:
    """Refuse to hold splits as uint8 images on the device when they take more than half its free memory.

    Raises:
        ResourceError: they would not fit (the free memory is read by ``available_memory``).
    """
    from dmjd.engine import ResourceError
    from dmjd.engine.resources import available_memory

    need = sum(len(cast(Sized, ds)) for ds in splits) * src.spec.in_chans * src.spec.img_size**2
    free = available_memory(src.device)
    if free is not None and need > free / 2:
        raise ResourceError(f"--recipe small holds the splits in memory: {need / 2**30:.1f} GiB, more than half the "
                            f"{free / 2**30:.1f} GiB free on {src.device}; use --max-images or --recipe mae")  # fmt: skip


def _run_small_finetune(
    src: Source, args: argparse.Namespace, settings: SmallFinetuneSettings
) -> tuple[dict[str, Any], SmallFinetuneSettings]:
    """The small recipe's summary and settings, their ``epochs`` those run (under ``--budget``,
    ``--epochs`` that many reproduces the run)."""
    import torch.distributed as dist

    from dmjd.data import Normalize
    from dmjd.engine.runtime import autocast_dtype
    from dmjd.eval.features import images_in_memory
    from dmjd.eval.quick_finetune import quick_finetune

    if dist.is_initialized() and dist.get_world_size() > 1:
        raise InputError("--recipe small runs in one process; start it without torchrun (or use --recipe mae)")
    splits = source_splits(src, args)
    check_splits_fit_in_memory(src, splits)
    train, test = (images_in_memory(ds, src.device, num_workers=src.num_workers) for ds in splits)
    normalize = Normalize(src.spec.mean, src.spec.std).to(src.device)
    out = quick_finetune(src.encoder, train, test, normalize, settings, pool="avg",
                         amp_dtype=autocast_dtype("auto", src.device), budget_s=args.budget)  # fmt: skip
    summary = {"kind": "finetune", "protocol": "small-finetune", "finetune_top1": out.top1, "epochs": out.epochs,
               "steps": out.steps, "budget_s": args.budget, "first_epoch_s": out.first_epoch_s,
               "lr": settings.peak_lr(), "batch_size": settings.batch_size, "pool": "avg",
               "train_images": len(train[1]), "val_images": len(test[1]), "time_s": out.time_s}  # fmt: skip
    return summary, dataclasses.replace(settings, epochs=out.epochs)


@eval_command
def _run_finetune(args: argparse.Namespace) -> int:
    from dmjd.eval.settings import choose_recipe, recipe_settings

    given = _given_settings(args)
    check_recipe_options(args.recipe, args)  # refusals before the checkpoint loads (all but auto's)
    if args.recipe != "auto":
        recipe_settings(args.recipe, given)
    src = load_source(args, default_sub="finetune")
    recipe, why = choose_recipe(args.recipe, src.spec.img_size, resuming=bool(args.resume or args.overwrite))
    if src.is_main:
        print(f"dmjd: fine-tuning recipe: {recipe} ({why})", flush=True)
    check_recipe_options(recipe, args)
    settings = recipe_settings(recipe, given)
    if isinstance(settings, FinetuneSettings):  # recipe "mae" (RECIPES)
        summary, settings = _run_mae_finetune(src, args, settings)
    else:
        summary, settings = _run_small_finetune(src, args, settings)
    result = {**summary, **src.name, "recipe": recipe, "data": src.cfg.data.name, "data_path": src.cfg.data.path,
              "settings": dataclasses.asdict(settings)}  # fmt: skip
    folder = [src.output_dir] if recipe == "mae" and src.output_dir != src.run_dir else []
    finish(src, result, "finetune", folder)
    return 0


def _duration(text: str) -> float:
    from dmjd.config.duration import parse_duration

    try:
        return parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_finetune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune end to end, top-1 on the validation split: the small-data recipe in memory, or MAE's "
        "(ConvMAE's) recipe, data-parallel under torchrun (--batch-size per process)",
    )
    _add_checkpoint(p, timm_ok=False, output_help="fine-tuning run folder (default: <checkpoint folder>/finetune)")
    _add_max_images(p)
    p.add_argument("--recipe", choices=("auto", *RECIPES), default="auto",
                   help="small: in-memory small-data recipe (seconds to minutes); mae: MAE's ImageNet recipe; "
                   "auto: mae for encoders of 224 px or more, else small (default: %(default)s)")  # fmt: skip
    p.add_argument("--budget", type=_duration, default=None, metavar="DURATION",
                   help="--recipe small: run as many epochs as fit in this time (e.g. 90s, 5m), "
                   "from the first epoch's time; instead of --epochs")  # fmt: skip
    p.add_argument("--resume", default=None, help="--recipe mae: fine-tuning checkpoint or run folder, "
                   "or 'auto' = the one in --output-dir")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="--recipe mae: replace a fine-tuning run in --output-dir")
    _add_recipe_settings(p)
    p.set_defaults(func=_run_finetune)


# --------------------------------------------------------------------------------------- tsne
@eval_command
def _run_tsne(args: argparse.Namespace) -> int:
    from torch.utils.data import Subset

    from dmjd.eval.features import class_names, dataset_labels
    from dmjd.eval.tsne import save_tsne_figure, select_classes, tsne_embedding

    src = load_source(args)
    data = src.cfg.data
    _, test = source_splits(src, args)
    picked = Subset(test, select_classes(dataset_labels(test), args.num_classes, args.per_class, args.seed).tolist())
    feats, labels = dataset_features(src, picked, args)
    if src.is_main:
        embedding = tsne_embedding(feats, args.perplexity, args.seed)
        model = Path(src.name["checkpoint"]).parent.name if "checkpoint" in src.name else src.name["timm_model"]
        title = f"t-SNE of the {src.pool} features of {model} on {len(labels)} {data.name} test images"
        figure = save_tsne_figure(embedding, labels.numpy(), src.output_dir / "tsne.png", class_names(test), title)
        result = {"kind": "tsne", "figure": str(figure), "classes": int(labels.unique().numel()),
                  "images": len(labels), **src.name, "data": data.name, "pool": src.pool}  # fmt: skip
        finish(src, result, "tsne", [figure])
    return 0


def _add_tsne(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tsne", help="t-SNE of frozen features of up to 20 classes (PNG)")
    _add_checkpoint(p, timm_ok=True)
    _add_features(p)
    p.add_argument("--num-classes", type=int, choices=range(1, 21), default=20, metavar="1..20",
                   help="classes drawn (default: %(default)s)")  # fmt: skip
    p.add_argument("--per-class", type=_positive(int), default=100, help="test images per class (default: %(default)s)")
    p.add_argument("--perplexity", type=_positive(float), default=30.0, help="t-SNE perplexity (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="image choice and t-SNE seed (default: %(default)s)")
    p.set_defaults(func=_run_tsne)


# ---------------------------------------------------------------------------------- visualize
@eval_command
def _run_visualize(args: argparse.Namespace) -> int:
    from dmjd.data import Normalize, eval_transform
    from dmjd.engine.builders import build_masking, build_target
    from dmjd.engine.runtime import resolve_device
    from dmjd.eval.loading import (
        InputSpec,
        checkpoint_position,
        config_with_overrides,
        dmjd_model_from_state,
        published_mae_model,
    )
    from dmjd.eval.visualize import can_draw, drawn_images, save_reconstruction_figure
    from dmjd.io.checkpoint import PRETRAINING, load_checkpoint
    from dmjd.models.sources import is_dmjd_run

    out, run_dir = writable_output(args)
    device = resolve_device(args.device)
    if is_dmjd_run(args.checkpoint):
        state = load_checkpoint(args.checkpoint, expected=PRETRAINING)
        model, cfg = dmjd_model_from_state(state, args.checkpoint, device)
        position = checkpoint_position(state, cfg)
        cfg = config_with_overrides(cfg.model_dump(mode="json"), args.overrides)
    else:
        model, cfg = published_mae_model(args.checkpoint, args.overrides, device)
        position = {}
    spec, target = InputSpec.from_config(cfg), build_target(cfg).to(device)
    if not can_draw(target):
        raise InputError(f"{args.checkpoint} regresses {cfg.target.name} targets, which have no picture; "
                         "visualize draws pixel and HOG targets")  # fmt: skip
    d = cfg.data
    transform = eval_transform(spec.img_size, spec.in_chans, background=d.background)
    images = drawn_images(d.name, d.path, transform, args.num_images, args.seed, d.download).to(device)
    figure = save_reconstruction_figure(
        model, target, build_masking(cfg), Normalize(spec.mean, spec.std).to(device),
        images, out / "visualize.png", seed=args.seed,
    )  # fmt: skip
    result = {"kind": "visualize", "figure": str(figure), "checkpoint": str(args.checkpoint), "images": len(images)}
    emit(result, out, "visualize")
    record_evaluation(result, run_dir, position, [out / "visualize.json", figure])
    return 0


def _add_visualize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("visualize", help="images, their K disjoint masked views and the reconstructions (PNG)")
    _add_checkpoint(p, timm_ok=False)
    p.add_argument("--num-images", type=_positive(int), default=4, help="images drawn (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the masks and of the images: a random sample of the test split, the classes "
                   "taken in turn (default: %(default)s)")  # fmt: skip
    p.set_defaults(func=_run_visualize)


# --------------------------------------------------------------------------------------- plot
def _run_plot(args: argparse.Namespace) -> int:
    from dmjd.engine.run_dir import check_writable
    from dmjd.eval.plot import FIGURE_NAME, default_figure_path, read_evals, read_run, run_summary, save_curves_figure

    if args.output:
        output = Path(args.output)
    else:
        output = Path(args.output_dir) / FIGURE_NAME if args.output_dir else default_figure_path(args.runs)
    check_writable(output.parent)
    runs = {str(run): run_summary(read_run(run), read_evals(run)) for run in args.runs}
    figure = save_curves_figure(args.runs, output, args.labels)
    emit({"kind": "plot", "figure": str(figure), "runs": runs}, output.parent, output.stem)
    return 0


def _add_plot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot", help="loss vs ETE and wall time, and evaluations (monitor, evals.jsonl) of one or more runs (PNG)"
    )
    p.add_argument("runs", nargs="+", help="run folders holding metrics.jsonl (pre-training or fine-tuning)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--output-dir", default=None,
                       help="folder for curves.png / curves.json (default: one run's own curves.png, redrawn; for "
                       "runs A B C, A/curves-vs-B-C.png, which replaces no run's curves.png)")  # fmt: skip
    where.add_argument("--output", default=None, help="or the PNG file itself (its .json goes beside it)")
    p.add_argument("--labels", nargs="+", default=None, help="legend names, one per run (default: folder names)")
    p.set_defaults(func=_run_plot)


# ------------------------------------------------------------------------------------- export
@eval_command
def _run_export(args: argparse.Namespace) -> int:
    from dmjd.engine.run_dir import check_writable
    from dmjd.eval.export import export_encoder, model_card, write_model_card
    from dmjd.eval.loading import InputSpec, checkpoint_position, encoder_from_state
    from dmjd.io.checkpoint import PRETRAINING, load_checkpoint, resolve_checkpoint

    checkpoint = resolve_checkpoint(args.checkpoint)
    folder = check_writable(Path(args.output_dir) if args.output_dir else checkpoint.parent / "export")
    state = load_checkpoint(checkpoint, expected=PRETRAINING)
    encoder, cfg = encoder_from_state(state, checkpoint)
    position = checkpoint_position(state, cfg)
    spec = InputSpec.from_config(cfg)
    exported = export_encoder(encoder, folder, spec, args.pool, args.license)
    write_model_card(exported, model_card(exported, *_card_inputs(checkpoint, cfg, position, folder), args.license))
    if exported.arch == "vit":
        extra = ", ".join(f"{k}={v}" for k, v in exported.kwargs.items())
        print(f"dmjd: wrote {exported.folder}: timm model {exported.model_name}{f' ({extra})' if extra else ''}, "
              f"global_pool={exported.pool}, num_classes=0; model card README.md")  # fmt: skip
    print(exported.snippet)
    result = {"kind": "export", "folder": str(exported.folder), "file": str(exported.file), **exported.describe(),
              "checkpoint": str(checkpoint)}  # fmt: skip
    emit(result, folder, "export")
    record_evaluation(result, folder, position, [folder / "export.json", *exported.files])
    return 0


def _card_inputs(
    checkpoint: Path, cfg: Config, position: dict[str, Any], folder: Path
) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """What the model card of an export says: the run (data, method, recipe, ETE, device-hours),
    the evaluations of this checkpoint in its run's ``evals.jsonl`` and the commands."""
    from dmjd.engine.metrics import read_metrics

    run_dir = checkpoint.parent
    summary_file = run_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    evals_file = run_dir / "evals.jsonl"
    evals = [r for r in (read_metrics(evals_file) if evals_file.is_file() else [])
             if r.get("epoch") == position["epoch"] and r.get("kind") in ("knn", "linprobe", "finetune")]  # fmt: skip
    evals += _monitor_records(summary, position["epoch"], cfg.data.name)
    m, k, t = cfg.masking, cfg.masking.num_views, cfg.target
    method = (f"{'DMJD' if k > 1 or cfg.model.vdb else 'MAE-style'} masked image modeling: {k} view(s), {m.pattern} "
              f"masking {m.mask_ratio:g}, {t.name} target, visible distillation branch {'on' if cfg.model.vdb else 'off'}")  # fmt: skip
    mo, o = cfg.model, cfg.optim
    recipe = [f"model: {mo.arch} {mo.img_size} px, patch {mo.patch_size}, {mo.in_chans} channels",
              f"optim: batch {o.batch_size}, blr {o.blr:g}, weight decay {o.weight_decay:g}",
              f"train.budget: {cfg.train.budget}", f"full config: {run_dir / 'config.yaml'}"]  # fmt: skip
    run = {"data": f"{cfg.data.name} ({cfg.data.path or 'its default location'})", "method": method, "recipe": recipe,
           "ete": position["ete"], "device_hours": summary.get("device_hours", "unknown"),
           "device": summary.get("device", "unknown"), "init": getattr(cfg.model, "init", None)}  # fmt: skip
    commands = [f"dmjd pretrain --config {run_dir / 'config.yaml'} --output-dir {run_dir}",
                f"dmjd export --checkpoint {checkpoint} --output-dir {folder}"]  # fmt: skip
    return run, evals, commands


def _monitor_records(summary: dict[str, Any], epoch: int, data: str) -> list[dict[str, Any]]:
    """The pre-training run's own last evaluation (``summary.json``: kNN and linear probe on the
    held-out split, beside the untrained encoder and raw pixels) as card records, when it is this
    checkpoint's."""
    final = summary.get("evaluation") or {}
    if final.get("epoch") != epoch:
        return []
    rows = [("this encoder", final), ("untrained encoder (baseline)", summary.get("evaluation_untrained") or {}),
            ("raw pixels (baseline)", summary.get("evaluation_raw_pixels") or {})]  # fmt: skip
    return [{"kind": f"{name} {words}", "protocol": "pre-training monitor", key: record[key], "data": f"{data}, held-out split"}
            for words, record in rows for key, name in (("knn_top1", "kNN,"), ("linprobe_top1", "linear probe,"))
            if record.get(key) is not None]  # fmt: skip


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="encoder -> a hub folder (config.json, model.safetensors, README.md model card) that "
        "timm.create_model('local-dir:FOLDER', pretrained=True) loads (ConViT: dmjd's loader; prints the call)",
    )
    p.add_argument("--checkpoint", required=True, help="dmjd pre-training checkpoint or run folder")
    p.add_argument("--output-dir", default=None, help="the folder to write (default: <checkpoint folder>/export)")
    p.add_argument("--pool", choices=("avg", "token"), default="avg",
                   help="ViT: the feature model(x) gives, timm's global_pool: avg = mean of the patch tokens, as "
                   "dmjd finetune uses; token = the class token, as knn / linprobe use by default (default: %(default)s)")  # fmt: skip
    p.add_argument("--license", default="other",
                   help="licence of the weights for the model card and config (e.g. apache-2.0, cc-by-4.0; "
                   "default: %(default)s)")  # fmt: skip
    p.set_defaults(func=_run_export)


def register_eval_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add knn, linprobe, finetune, tsne, visualize, plot and export to ``dmjd``'s subcommands.

    Each sets ``func(args) -> int`` (exit code) as its parser default.
    """
    for add in (_add_knn, _add_linprobe, _add_finetune, _add_tsne, _add_visualize, _add_plot, _add_export):
        add(subparsers)
