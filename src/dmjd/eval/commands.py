"""``dmjd knn | linprobe | finetune | tsne | visualize | plot | export``: thin layers over ``dmjd.eval``.

Every command reads a pre-training checkpoint (``--checkpoint``; the feature evaluations also take
``--timm-model NAME`` for comparison), evaluates on the labelled train/test splits of the data set
named in the checkpoint's config unless ``data.*`` overrides say otherwise, writes ``<command>.json``
into the output folder (default: the checkpoint's folder) and prints the same JSON as its last line.
Errors are raised as CheckpointError, DataError, ConfigError or ValueError (exit code 2 in main).
The figure and export modules (matplotlib, scikit-learn, safetensors) load when their command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from dmjd.config import Config
from dmjd.data import Normalize, build_dataset, eval_transform
from dmjd.engine.distributed import init_distributed
from dmjd.engine.builders import build_masking, build_target
from dmjd.engine.trainer import resolve_device
from dmjd.eval.features import (
    Pool,
    class_names,
    dataset_labels,
    default_pool,
    extract_features,
    labelled_splits,
    num_classes,
)
from dmjd.eval.finetune import Finetuner, FinetuneSettings, finetune_transforms
from dmjd.eval.knn import knn_top1
from dmjd.eval.linear_probe import ProbeSettings, linear_probe, logistic_regression_top1
from dmjd.eval.loading import (
    InputSpec,
    config_with_overrides,
    load_dmjd_model,
    load_encoder,
    load_timm_encoder,
)


@dataclass
class Source:
    """An encoder to evaluate, its input, the data to evaluate on and where results go."""

    encoder: nn.Module
    spec: InputSpec
    cfg: Config
    output_dir: Path
    device: torch.device
    name: dict[str, str]
    pool: Pool
    is_main: bool = True


def emit(result: dict[str, Any], folder: Path, name: str) -> None:
    """Write ``result`` to ``folder/<name>.json`` and print it as one JSON line."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result), flush=True)


def _add_checkpoint(p: argparse.ArgumentParser, timm_ok: bool) -> None:
    if timm_ok:
        group = p.add_mutually_exclusive_group(required=True)
        group.add_argument("--checkpoint", help="dmjd pre-training checkpoint (checkpoint-last.pth)")
        group.add_argument("--timm-model", help="or a timm model name with its pre-trained weights, to compare")
    else:
        p.add_argument("--checkpoint", required=True, help="dmjd pre-training checkpoint (checkpoint-last.pth)")
    p.add_argument("--output-dir", default=None, help="where results go (default: the checkpoint's folder)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    p.add_argument(
        "overrides", nargs="*", metavar="data.KEY=VALUE",
        help="evaluate on other data, e.g. data.name=cifar10 data.path=/data data.num_workers=8",
    )  # fmt: skip


def _add_max_images(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-images", type=int, default=None, help="seeded random subset per split (default: all)")


def _add_features(p: argparse.ArgumentParser) -> None:
    _add_max_images(p)
    p.add_argument("--pool", choices=("cls", "avg"), default=None,
                   help="class token or mean of patch tokens (default: cls when the encoder has one)")  # fmt: skip
    p.add_argument("--feature-batch-size", type=int, default=256, help="images per feature-extraction batch")


def _add_settings(p: argparse.ArgumentParser, cls: type) -> None:
    """One option per field of a settings dataclass; defaults and help come from the dataclass."""
    group = p.add_argument_group(f"{cls.__name__.removesuffix('Settings').lower()} settings")
    for f in dataclasses.fields(cls):
        extra = {"choices": f.metadata["choices"]} if "choices" in f.metadata else {}
        group.add_argument(
            "--" + f.name.replace("_", "-"), dest=f.name, default=f.default,
            type=f.metadata.get("type", type(f.default)), help=f.metadata["help"] + " (default: %(default)s)", **extra,
        )  # fmt: skip


def _settings(cls: type, args: argparse.Namespace) -> Any:
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def load_source(args: argparse.Namespace) -> Source:
    """Load ``--checkpoint`` or ``--timm-model`` and resolve the data, device and output folder.

    Under torchrun this joins the process group; on GPUs each process takes ``cuda:LOCAL_RANK``.

    Raises:
        ValueError: ``--timm-model`` without ``--output-dir``.
    """
    device = resolve_device(args.device)
    info = init_distributed(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    is_main = info.is_main
    if getattr(args, "timm_model", None):
        if args.output_dir is None:
            raise ValueError("--timm-model needs --output-dir")
        encoder = load_timm_encoder(args.timm_model, pretrained=True, device=device)
        cfg = config_with_overrides({}, args.overrides)
        spec, out, name = InputSpec.from_timm(encoder), Path(args.output_dir), {"timm_model": args.timm_model}
    else:
        encoder, cfg = load_encoder(args.checkpoint, device)
        cfg = config_with_overrides(cfg.model_dump(mode="json"), args.overrides)
        spec, name = InputSpec.from_config(cfg), {"checkpoint": str(args.checkpoint)}
        out = Path(args.output_dir) if args.output_dir else Path(args.checkpoint).parent
    pool = getattr(args, "pool", None) or default_pool(encoder)
    return Source(encoder, spec, cfg, out, device, name, pool, is_main)


def source_splits(src: Source, args: argparse.Namespace) -> tuple[Dataset, Dataset]:
    """The labelled train and test splits of the source's data set, centre-cropped for its encoder."""
    transform = eval_transform(src.spec.img_size, src.spec.in_chans)
    data = src.cfg.data
    return labelled_splits(data.name, data.path, transform, transform, data.download, args.max_images)


def dataset_features(src: Source, dataset: Dataset, args: argparse.Namespace) -> tuple[Tensor, Tensor]:
    """Frozen features ``[N, D]`` and labels ``[N]`` of a data set, with the source's encoder and pool."""
    normalize = Normalize(src.spec.mean, src.spec.std)
    return extract_features(src.encoder, dataset, args.feature_batch_size, src.device, src.pool, normalize,
                            src.cfg.data.num_workers)  # fmt: skip


def source_features(src: Source, args: argparse.Namespace) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Frozen features and labels of the train and test splits: ``(train_x, train_y, test_x, test_y)``."""
    train, test = source_splits(src, args)
    return (*dataset_features(src, train, args), *dataset_features(src, test, args))


def _describe(src: Source, train_y: Tensor, test_y: Tensor) -> dict[str, Any]:
    return {**src.name, "data": src.cfg.data.name, "pool": src.pool,
            "train_images": len(train_y), "test_images": len(test_y)}  # fmt: skip


# ---------------------------------------------------------------------------------------- knn
def _run_knn(args: argparse.Namespace) -> int:
    src = load_source(args)
    train_x, train_y, test_x, test_y = source_features(src, args)
    top1 = knn_top1(train_x, train_y, test_x, test_y, args.k, args.temperature)
    if src.is_main:
        result = {"kind": "knn", "knn_top1": top1, "k": args.k, "temperature": args.temperature,
                  **_describe(src, train_y, test_y)}  # fmt: skip
        emit(result, src.output_dir, "knn")
    return 0


def _add_knn(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("knn", help="weighted k-NN top-1 on frozen features (DINO protocol)")
    _add_checkpoint(p, timm_ok=True)
    _add_features(p)
    p.add_argument("--k", type=int, default=20, help="neighbours (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.07, help="vote weight exp(sim / T) (default: %(default)s)")
    p.set_defaults(func=_run_knn)


# ----------------------------------------------------------------------------------- linprobe
def _run_linprobe(args: argparse.Namespace) -> int:
    src = load_source(args)
    train_x, train_y, test_x, test_y = source_features(src, args)
    if args.fast:
        top1 = logistic_regression_top1(train_x, train_y, test_x, test_y, c=args.logreg_c)
        protocol: dict[str, Any] = {"protocol": "logreg", "C": args.logreg_c}
    else:
        settings = _settings(ProbeSettings, args)
        top1 = linear_probe(train_x, train_y, test_x, test_y, settings, src.device)
        protocol = {"protocol": "mae", **dataclasses.asdict(settings), "lr": settings.peak_lr(settings.batch_size)}
    if src.is_main:
        result = {"kind": "linprobe", "linprobe_top1": top1, **protocol, **_describe(src, train_y, test_y)}
        emit(result, src.output_dir, "linprobe")
    return 0


def _add_linprobe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("linprobe", help="linear probe on frozen features (MAE protocol, or --fast)")
    _add_checkpoint(p, timm_ok=True)
    _add_features(p)
    p.add_argument("--fast", action="store_true", help="logistic regression on standardised features instead")
    p.add_argument("--logreg-c", type=float, default=1.0, help="inverse L2 strength of --fast (default: %(default)s)")
    _add_settings(p, ProbeSettings)
    p.set_defaults(func=_run_linprobe)


# ----------------------------------------------------------------------------------- finetune
def _run_finetune(args: argparse.Namespace) -> int:
    args.output_dir = args.output_dir or str(Path(args.checkpoint).parent / "finetune")
    src = load_source(args)
    settings = _settings(FinetuneSettings, args)
    train_tf, val_tf = finetune_transforms(src.spec, settings)
    data = src.cfg.data
    train, val = labelled_splits(data.name, data.path, train_tf, val_tf, data.download, args.max_images)
    trainer = Finetuner(
        src.encoder, train, val, num_classes(train, val), settings, src.output_dir, src.device,
        num_workers=data.num_workers, resume=args.resume, overwrite=args.overwrite,
    )  # fmt: skip
    summary = trainer.fit()
    if src.is_main:
        result = {**summary, **src.name, "data": data.name, "settings": dataclasses.asdict(settings)}
        emit(result, src.output_dir, "finetune")
    return 0


def _add_finetune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune end to end (MAE / ConvMAE recipe), top-1 on the validation split; "
        "data-parallel under torchrun (--batch-size per process)",
    )
    _add_checkpoint(p, timm_ok=False)
    _add_max_images(p)
    p.add_argument("--resume", default=None, help="fine-tuning checkpoint, or 'auto' = the one in --output-dir")
    p.add_argument("--overwrite", action="store_true", help="replace a fine-tuning run in --output-dir")
    _add_settings(p, FinetuneSettings)
    p.set_defaults(func=_run_finetune)


# --------------------------------------------------------------------------------------- tsne
def _run_tsne(args: argparse.Namespace) -> int:
    from dmjd.eval.tsne import save_tsne_figure, select_classes, tsne_embedding

    src = load_source(args)
    data = src.cfg.data
    _, test = source_splits(src, args)
    picked = Subset(test, select_classes(dataset_labels(test), args.num_classes, args.per_class, args.seed).tolist())
    feats, labels = dataset_features(src, picked, args)
    if src.is_main:
        embedding = tsne_embedding(feats, args.perplexity, args.seed)
        title = f"t-SNE of {src.pool} features: {next(iter(src.name.values()))} on {data.name}"
        figure = save_tsne_figure(embedding, labels.numpy(), src.output_dir / "tsne.png", class_names(test), title)
        result = {"kind": "tsne", "figure": str(figure), "classes": int(labels.unique().numel()),
                  "images": len(labels), **src.name, "data": data.name, "pool": src.pool}  # fmt: skip
        emit(result, src.output_dir, "tsne")
    return 0


def _add_tsne(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tsne", help="t-SNE of frozen features of up to 20 classes (PNG)")
    _add_checkpoint(p, timm_ok=True)
    _add_features(p)
    p.add_argument("--num-classes", type=int, default=20, help="classes drawn, at most 20 (default: %(default)s)")
    p.add_argument("--per-class", type=int, default=100, help="test images per class (default: %(default)s)")
    p.add_argument("--perplexity", type=float, default=30.0, help="t-SNE perplexity (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="image choice and t-SNE seed (default: %(default)s)")
    p.set_defaults(func=_run_tsne)


# ---------------------------------------------------------------------------------- visualize
def _run_visualize(args: argparse.Namespace) -> int:
    from dmjd.eval.visualize import save_reconstruction_figure

    device = resolve_device(args.device)
    model, cfg = load_dmjd_model(args.checkpoint, device)
    cfg = config_with_overrides(cfg.model_dump(mode="json"), args.overrides)
    spec = InputSpec.from_config(cfg)
    split = "train" if cfg.data.name == "imagefolder" else "test"
    transform = eval_transform(spec.img_size, spec.in_chans)
    ds = build_dataset(cfg.data.name, split, transform, cfg.data.path, cfg.data.download)
    images = torch.stack([ds[i][0] for i in range(min(args.num_images, len(ds)))]).to(device)
    out = Path(args.output_dir) if args.output_dir else Path(args.checkpoint).parent
    figure = save_reconstruction_figure(
        model, build_target(cfg).to(device), build_masking(cfg), Normalize(spec.mean, spec.std).to(device),
        images, out / "visualize.png", seed=args.seed,
    )  # fmt: skip
    result = {"kind": "visualize", "figure": str(figure), "checkpoint": str(args.checkpoint), "images": len(images)}
    emit(result, out, "visualize")
    return 0


def _add_visualize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("visualize", help="images, their K disjoint masked views and the reconstructions (PNG)")
    _add_checkpoint(p, timm_ok=False)
    p.add_argument("--num-images", type=int, default=4, help="images drawn (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="mask seed (default: %(default)s)")
    p.set_defaults(func=_run_visualize)


# --------------------------------------------------------------------------------------- plot
def _run_plot(args: argparse.Namespace) -> int:
    from dmjd.eval.plot import read_run, run_summary, save_curves_figure

    output = Path(args.output) if args.output else Path(args.runs[0]) / "curves.png"
    figure = save_curves_figure(args.runs, output, args.labels)
    runs = {str(run): run_summary(read_run(run)) for run in args.runs}
    emit({"kind": "plot", "figure": str(figure), "runs": runs}, output.parent, "curves")
    return 0


def _add_plot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="loss vs ETE and wall time, accuracy vs epochs of one or more runs (PNG)")
    p.add_argument("runs", nargs="+", help="run folders holding metrics.jsonl")
    p.add_argument("--output", default=None, help="PNG file (default: <first run>/curves.png)")
    p.add_argument("--labels", nargs="+", default=None, help="legend names, one per run (default: folder names)")
    p.set_defaults(func=_run_plot)


# ------------------------------------------------------------------------------------- export
def _run_export(args: argparse.Namespace) -> int:
    from dmjd.eval.export import export_encoder

    encoder, cfg = load_encoder(args.checkpoint)
    output = Path(args.output) if args.output else Path(args.checkpoint).parent / "encoder.safetensors"
    exported = export_encoder(encoder, output, InputSpec.from_config(cfg))
    print(exported.snippet)
    result = {"kind": "export", "file": str(exported.file), **exported.describe(), "checkpoint": str(args.checkpoint)}
    emit(result, output.parent, "export")
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="encoder -> safetensors loadable by timm.create_model (ViT) or dmjd's ConViT (prints the call)"
    )
    p.add_argument("--checkpoint", required=True, help="dmjd pre-training checkpoint")
    p.add_argument("--output", default=None, help="FILE.safetensors (default: <checkpoint folder>/encoder.safetensors)")
    p.set_defaults(func=_run_export)


def register_eval_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add knn, linprobe, finetune, tsne, visualize, plot and export to ``dmjd``'s subcommands.

    Each sets ``func(args) -> int`` (exit code) as its parser default.
    """
    for add in (_add_knn, _add_linprobe, _add_finetune, _add_tsne, _add_visualize, _add_plot, _add_export):
        add(subparsers)
