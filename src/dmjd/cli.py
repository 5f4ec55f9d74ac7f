"""The ``dmjd`` command line: thin subcommands over the Python API."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from pydantic import BaseModel

from dmjd.config import Config
from dmjd.engine import Pretrainer

EXIT_BAD_INPUT = 2
EXIT_NONFINITE = 3
EXIT_INTERRUPTED = 130


def describe_keys(model: type[BaseModel] | None = None, prefix: str = "") -> list[str]:
    """One help line per config key: dotted name, default and description."""
    model = model or Config
    lines = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            lines += describe_keys(ann, key + ".")
            continue
        desc = f"  {field.description}" if field.description else ""
        allowed = getattr(ann, "__args__", None)
        choices = f" {{{', '.join(map(str, allowed))}}}" if allowed and str(ann).startswith("typing.Literal") else ""
        lines.append(f"  {key}={field.default!r}{choices}{desc}")
    return lines


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    from dmjd.config import available_presets

    p = sub.add_parser(
        "pretrain",
        help="pre-train an encoder with disjoint masking and joint distillation",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Pre-train with DMJD. Configuration: schema defaults < --config preset < KEY=VALUE overrides.\n"
            f"Presets: {', '.join(available_presets())} (or a path to a YAML file).\n"
            "Example: dmjd pretrain --config dmjd-vit-b --output-dir runs/b data.path=/imagenet/train optim.lr=1e-3"
        ),
        epilog="Overridable keys (KEY=default):\n" + "\n".join(describe_keys()),
    )
    p.add_argument("--config", default=None, help="preset name or YAML file (default: schema defaults)")
    p.add_argument("--output-dir", required=True, help="run folder: metrics.jsonl, checkpoints, figures")
    p.add_argument("--resume", default=None, help="checkpoint path, or 'auto' = newest in --output-dir")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --output-dir")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides, e.g. optim.epochs=10")
    p.set_defaults(func=_run_pretrain)


def sample_images(cfg: Config, n: int) -> torch.Tensor:
    """The first ``n`` images of the run's data set, resized for evaluation: ``[n, C, H, W]``."""
    from dmjd.data import build_dataset, eval_transform

    split = "test" if cfg.data.name in ("embedded", "fashion_mnist", "cifar10", "cifar100", "stl10") else "train"
    ds = build_dataset(cfg.data.name, split, eval_transform(cfg.model.img_size, cfg.model.in_chans), cfg.data.path)
    return torch.stack([ds[i][0] for i in range(min(n, len(ds)))])


def monitor_hook(cfg: Config, trainer: Pretrainer) -> Callable[[Pretrainer], dict | None] | None:
    """The online kNN / linear-probe monitor as an epoch hook, when ``monitor.interval`` > 0."""
    if cfg.monitor.interval == 0 or not trainer.dist.is_main:
        return None
    from dmjd.eval.monitor import OnlineMonitor

    monitor = OnlineMonitor.from_config(cfg, max_images=cfg.monitor.max_images, device=str(trainer.device))
    last_epoch = cfg.optim.epochs

    def hook(t: Pretrainer) -> dict | None:
        done = t.state.epoch
        if done % cfg.monitor.interval == 0 or done == last_epoch or t.time_up:
            return monitor(t.model.encoder)
        return None

    return hook


def _run_pretrain(args: argparse.Namespace) -> int:
    from dmjd.config import load_config
    from dmjd.engine import resume_config
    from dmjd.engine.trainer import resolve_resume
    from dmjd.eval.visualize import can_draw, save_reconstruction_figure

    ckpt_path = resolve_resume(args.output_dir, args.resume)
    cfg = resume_config(ckpt_path, args.overrides) if ckpt_path else load_config(args.config, args.overrides)
    trainer = Pretrainer(cfg, args.output_dir, resume=args.resume, overwrite=args.overwrite)
    summary = trainer.fit(on_epoch_end=monitor_hook(cfg, trainer))
    if trainer.dist.is_main and can_draw(trainer.target):
        images = sample_images(cfg, 4).to(trainer.device)
        figure = save_reconstruction_figure(
            trainer.model, trainer.target, trainer.masking, trainer.normalize, images,
            Path(args.output_dir) / "reconstruction.png",
        )  # fmt: skip
        summary["figure"] = str(figure)
    if trainer.dist.is_main:
        print(json.dumps(summary))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="dmjd", description="Efficient masked image modeling: Disjoint Masking with Joint Distillation."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from dmjd.bench import register_bench_command
    from dmjd.eval.commands import register_eval_commands

    registrars: list[Callable[[argparse._SubParsersAction], None]] = [
        _add_pretrain,
        register_eval_commands,
        register_bench_command,
    ]
    for registrar in registrars:
        registrar(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dmjd`` console script; returns the process exit code."""
    from dmjd.config import ConfigError
    from dmjd.data import DataError
    from dmjd.engine import CheckpointError, NonFiniteLossError, OutputDirError, ResourceError, TrainingInterrupted

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, DataError, OutputDirError, CheckpointError, ResourceError, ValueError, FileNotFoundError) as err:
        print(f"dmjd: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except NonFiniteLossError as err:
        print(f"dmjd: error: {err}", file=sys.stderr)
        return EXIT_NONFINITE
    except TrainingInterrupted as err:
        print(f"dmjd: {err}", file=sys.stderr)
        return EXIT_INTERRUPTED
