"""The ``dmjd`` command line: thin subcommands over the Python API.

Building the parser imports no torch (the subcommands load what they need when they run), so
``dmjd --help`` and every subcommand's ``--help`` answer at once. Importing this module imports
nothing heavy either: ``main`` takes over Ctrl-C before the first slow import.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence, Sized
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn, cast

import dmjd
from dmjd.errors import InputError

if TYPE_CHECKING:
    import torch
    from pydantic import BaseModel

    from dmjd.config import Config
    from dmjd.engine import Pretrainer

EXIT_BAD_INPUT = 2
EXIT_NONFINITE = 3
EXIT_INTERRUPTED = 130


def is_main_rank() -> bool:
    """Whether this is the main process of a launch (torchrun's ``RANK``, SLURM's ``SLURM_PROCID``; True
    alone), read from the environment so that it answers before torch loads."""
    return os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) == "0"


def say(line: str) -> None:
    """Print a line every process of a launch reaches (a bad input, a stop) once: from the main one."""
    if is_main_rank():
        print(line, file=sys.stderr)


def describe_keys(model: type[BaseModel] | None = None, prefix: str = "") -> list[str]:
    """One help line per config key: dotted name, default and description."""
    from pydantic import BaseModel

    from dmjd.config import Config

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
            "Pre-train with DMJD. Configuration: schema defaults < --config preset (or the auto recipe) < KEY=VALUE "
            "overrides.\n"
            "Without --config, the auto recipe looks at the data, the device and train.budget (default 20m) and prints "
            "each choice with its reason; any choice can be overridden by its key.\n"
            f"Presets: {', '.join(available_presets())} (or a path to a YAML file: a value with / or .yaml).\n"
            "Own images: data.path=/photos train.budget=30m (a folder of images or class folders; the kind is inferred).\n"
            "Example: dmjd pretrain --config dmjd-vit-b --output-dir runs/b data.path=/imagenet/train optim.lr=1e-3"
        ),
        epilog="Overridable keys (KEY=default):\n" + "\n".join(describe_keys()),
    )
    p.add_argument("--config", default=None,
                   help="preset name or YAML file, or 'auto': a recipe chosen for the data, device and train.budget "
                   "(the default for a new run; recipe.method=mae for MAE)")  # fmt: skip
    p.add_argument("--output-dir", required=True, help="run folder: metrics.jsonl, log.txt, checkpoints, figures")
    p.add_argument("--resume", default=None,
                   help="checkpoint path, or 'auto' = newest in --output-dir (none: start fresh); only settings "
                   "that do not change the run may differ (device, workers, logging, ...)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --output-dir")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides, e.g. optim.epochs=10")
    p.set_defaults(func=_run_pretrain)


def sample_images(cfg: Config, n: int) -> torch.Tensor:
    """The first ``n`` images of the run's data set, resized for evaluation: ``[n, C, H, W]``."""
    import torch

    from dmjd.data import build_dataset, eval_transform

    transform = eval_transform(cfg.model.img_size, cfg.model.in_chans, background=cfg.data.background)
    if cfg.data.name == "webdataset":
        from dmjd.data.shards import first_images

        return first_images(cfg.data.path or "", n, transform)
    split = "test" if cfg.data.name in ("embedded", "fashion_mnist", "cifar10", "cifar100", "stl10") else "train"
    ds = build_dataset(cfg.data.name, split, transform, cfg.data.path)
    return torch.stack([ds[i][0] for i in range(min(n, len(cast(Sized, ds))))])


def monitor_hook(cfg: Config, trainer: Pretrainer) -> Callable[[Pretrainer], dict | None] | None:
    """The online kNN / linear-probe monitor as an epoch hook, when ``monitor.interval`` > 0.

    Its first call (step 0: the untrained encoder) also reports the raw-pixel baselines and the
    number of test images (``test_images``), which says how large a change the probes can tell.
    """
    if cfg.monitor.interval == 0 or not trainer.dist.is_main:
        return None
    from dmjd.eval.monitor import OnlineMonitor

    monitor = OnlineMonitor.from_config(cfg, max_images=cfg.monitor.max_images, device=str(trainer.device))

    def hook(t: Pretrainer) -> dict | None:
        if t.state.opt_step == 0:
            return {**monitor(t.model.encoder), **monitor.pixel_baseline(), "test_images": len(cast(Sized, monitor.test_set))}
        if t.state.epoch % cfg.monitor.interval == 0 or t.finished or t.time_up:
            return monitor(t.model.encoder)
        return None

    return hook


def achievement_lines(summary: dict[str, Any], data_name: str, init: str | None = None) -> list[str]:
    """What a monitored run achieved: each accuracy of the trained encoder next to the untrained
    encoder's (the starting encoder's, with ``model.init``) and the raw pixels' (from ``Pretrainer``'s summary)."""
    before = "starting encoder" if init else "untrained encoder"
    trained = summary.get("evaluation", {})
    untrained, pixels = summary.get("evaluation_untrained", {}), summary.get("evaluation_raw_pixels", {})
    lines = []
    for key, value in trained.items():
        if key == "epoch":
            continue
        parts = [f"trained encoder {value:.4f} (epoch {trained['epoch']})"]
        parts += [f"{before} {untrained[key]:.4f}"] if key in untrained else []
        parts += [f"raw pixels {pixels[key]:.4f}"] if key in pixels else []
        lines.append(f"dmjd: {key} on the {data_name} test split: " + " | ".join(parts))
    return lines


def meaning_lines(summary: dict[str, Any], data: str, init: str | None = None) -> list[str]:
    """What a monitored run's numbers mean, in words (trained against untrained, or the ``model.init``
    start, against raw pixels), and what to run next. A change within the sampling error of the
    test split (``dmjd.eval.chance.sampling_error``) is said to be one, not a rise or a fall."""
    from dmjd.eval.chance import sampling_error

    before = "at the start" if init else "untrained"
    trained, untrained = summary.get("evaluation", {}), summary.get("evaluation_untrained", {})
    key = next((k for k in ("knn_top1", "linprobe_top1") if k in trained and k in untrained), None)
    if key is None:
        return []
    name = {"knn_top1": "kNN", "linprobe_top1": "linear-probe"}[key]
    value, start = 100 * trained[key], 100 * untrained[key]
    pixels = summary.get("evaluation_raw_pixels", {}).get(key)
    gain, n = value - start, summary.get("evaluation_test_images")
    noise = 100 * sampling_error((value + start) / 200, n) if n else 0.0
    if abs(gain) <= noise:
        words = (f"pre-training left the encoder's {name} top-1 within the sampling error of its {n:,} test images "
                 f"({start:.1f} % {before}, {value:.1f} % now; ±{noise:.1f} points)")  # fmt: skip
    elif gain > 0:
        words = (f"pre-training raised the encoder's {name} top-1 from {start:.1f} % ({before}) to {value:.1f} % "
                 f"({gain:+.1f} points)")  # fmt: skip
    else:
        words = f"pre-training lowered the encoder's {name} top-1 ({start:.1f} % {before}, {value:.1f} % now)"
    if pixels is not None:
        beat = value > 100 * pixels
        words += (f", above raw pixels' {100 * pixels:.1f} %" if beat else
                  f"; raw pixels still score {100 * pixels:.1f} %: features this short a run learns do not yet beat "
                  "the images themselves")  # fmt: skip
    minutes = summary.get("time_s", 0) / 60
    return [
        f"dmjd: in words: after {minutes:.1f} min of training ({summary.get('ete', 0):.1f} effective epochs) on {data}, "
        f"{words}.",
        "dmjd: next: to learn whether DMJD beats MAE on your own images at equal time, run "
        "`dmjd compare FOLDER --budget 20m` (report.md opens with the verdict); longer runs: train.budget=2h",
    ]


def pretrain_config(config: str | None, overrides: list[str], output_dir: str, resume: str | None) -> Config:
    """The config of ``dmjd pretrain``: a preset or YAML file (``--config NAME``), a resumed run's saved
    config (``--resume`` with a checkpoint and no ``--config``), or the auto recipe for the data, device
    and budget (``--config auto``, or no ``--config``), whose choices it prints.

    Raises:
        ConfigError: ``--resume auto`` with no checkpoint to resume and nothing to start a run from.
    """
    from dmjd.config import ConfigError, load_config
    from dmjd.config.loading import check_override_keys

    if config not in (None, "auto"):  # validated before torch loads: a bad config answers in a moment
        return load_config(config, overrides)
    if resume is None:
        load_config(None, overrides)  # a fresh run's keys and values, also checked before torch loads
    else:
        check_override_keys(overrides)  # a resumed run's overrides apply to its saved config
    from dmjd.engine.resume import resolve_resume, resume_config
    from dmjd.recipe import auto_config, recipe_lines, user_keys

    checkpoint = resolve_resume(output_dir, resume)
    if checkpoint is not None:
        return resume_config(checkpoint, overrides)
    if resume == "auto" and config is None and not {"data.path", "data.name"} & user_keys(overrides):
        raise ConfigError(
            f"--resume auto: {output_dir} holds no checkpoint to resume, and no --config or data.path says what a new "
            "run should train on; give data.path=FOLDER (the auto recipe) or --config PRESET"
        )
    cfg, choices, _ = auto_config(overrides)
    for line in recipe_lines(choices, cfg.train.budget) if is_main_rank() else []:
        print(line)
    return cfg


def _run_pretrain(args: argparse.Namespace) -> int:
    cfg = pretrain_config(args.config, args.overrides, args.output_dir, args.resume)  # a bad config: before torch
    from dmjd.data.base import unreadable_once

    with unreadable_once():  # the training set, the monitor's splits and the figure meet the same broken files
        return _pretrain(cfg, args)


def _pretrain(cfg: Config, args: argparse.Namespace) -> int:
    from dmjd.engine import Pretrainer
    from dmjd.eval.plot import save_curves_figure
    from dmjd.eval.visualize import can_draw, save_reconstruction_figure

    trainer = Pretrainer(cfg, args.output_dir, resume=args.resume, overwrite=args.overwrite)
    finished_before = trainer.finished
    summary = trainer.fit(on_epoch_end=None if finished_before else monitor_hook(cfg, trainer))
    if trainer.dist.is_main and not finished_before:
        out = Path(args.output_dir)
        if can_draw(trainer.target):
            images = sample_images(cfg, 4).to(trainer.device)
            figure = save_reconstruction_figure(
                trainer.model, trainer.target, trainer.masking, trainer.normalize, images, out / "reconstruction.png"
            )
            summary["figure"] = str(figure)
        summary["curves"] = str(save_curves_figure([out], out / "curves.png"))
        init = trainer.cfg.model.init
        for line in achievement_lines(summary, cfg.data.name, init) + meaning_lines(summary, cfg.data.name, init):
            print(line)
    if trainer.dist.is_main:
        print(json.dumps(summary))
    return 0


def _add_shard(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "shard",
        help="write a data set as WebDataset tar shards with a manifest (for data.name=webdataset)",
        description="Write SRC (a folder of images or class folders, or a data set name: "
        "embedded, cifar10, ...) as DST/train-000000.tar, ... and DST/manifest.json (counts, classes, sha256 "
        "per shard); images are written as JPEG. Train on them with data.name=webdataset "
        "data.path='DST/train-{000000..NNNNNN}.tar'; --split val writes DST/val-*.tar, which evaluations "
        "(knn, linprobe, finetune, the monitor) read as the test split.",
    )
    p.add_argument("src", help="image folder (class sub-folders give labels) or data set name")
    p.add_argument("dst", help="output folder")
    p.add_argument("--shard-size", type=int, required=True, help="images per shard")
    p.add_argument("--max-side", type=int, default=None, help="shrink images whose longer side exceeds this")
    p.add_argument("--split", default="train",
                   help="split to write, also the shards' name prefix: train (default), val or test (of a named "
                        "data set, or SRC/<split> of an image folder tree); evaluations read val/test shards "
                        "next to the train shards")  # fmt: skip
    p.set_defaults(func=_run_shard)


def _run_shard(args: argparse.Namespace) -> int:
    from dmjd.data import DATASET_NAMES, build_dataset
    from dmjd.data.base import DataError
    from dmjd.data.datasets import infer_data_kind
    from dmjd.data.shard_writer import keep_image, write_shards

    if args.shard_size < 1 or (args.max_side is not None and args.max_side < 1):
        raise DataError("--shard-size and --max-side must be positive")
    if not args.split.isidentifier():
        raise DataError(f"--split {args.split!r} is also the shards' name prefix: give a plain name such as val")
    name, path = (args.src, None) if args.src in DATASET_NAMES else infer_data_kind(args.src)
    dataset = build_dataset(name, args.split, keep_image, path)
    manifest = write_shards(dataset, args.dst, args.shard_size, args.max_side, prefix=args.split)
    last = sum(s["name"].startswith(f"{args.split}-") for s in manifest["shards"]) - 1
    pattern = Path(args.dst) / f"{args.split}-{{000000..{last:06d}}}.tar"
    use = (f"train with data.name=webdataset data.path='{pattern}'" if args.split == "train" else
           "evaluations of runs on the train shards beside them read them as the test split")  # fmt: skip
    held = getattr(dataset, "held_out", 0)  # a class folder without val/: the other part of its split
    aside = f" ({held:,} files of its {'test' if args.split == 'train' else 'train'} split left out)" if held else ""
    print(f"dmjd: wrote {manifest['splits'][args.split]:,} images{aside} in {last + 1} shards to {args.dst}; {use}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered (no torch import)."""
    parser = argparse.ArgumentParser(
        prog="dmjd", description="Efficient masked image modeling: Disjoint Masking with Joint Distillation."
    )
    parser.add_argument("--version", action="version", version=f"dmjd {dmjd.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from dmjd.bench import register_bench_command, register_compare_command
    from dmjd.eval.commands import register_eval_commands

    registrars: list[Callable[[argparse._SubParsersAction], None]] = [
        _add_pretrain,
        _add_shard,
        register_eval_commands,
        register_bench_command,
        register_compare_command,
    ]
    for registrar in registrars:
        registrar(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dmjd`` console script; returns the process exit code.

    Problems with what the user gave (``InputError``), teacher or tokenizer weights that cannot be
    found, and resources that do not fit are one line on stderr (exit 2); Ctrl-C at any moment of a
    command, from its first import to its last byte written, is one line (exit 130), and a second
    Ctrl-C while it stops changes nothing; any other exception is a bug and keeps its traceback.
    The SIGINT handler in place before the call is restored after it.
    """
    interrupt = _InterruptOnce()
    previous = signal.signal(signal.SIGINT, interrupt)
    previous_hook, sys.unraisablehook = sys.unraisablehook, interrupt.unraisable(sys.unraisablehook)
    try:
        return _run(argv)
    except BaseException as err:
        # Whatever the interrupt became on its way up (a RuntimeError from a class being created, a
        # loader's error) is the interrupt.
        if not (interrupt.fired or isinstance(err, KeyboardInterrupt)):
            raise
        interrupt.stopping = True
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        say("\ndmjd: interrupted")  # on its own line, after the terminal's ^C
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
        sys.unraisablehook = previous_hook


def console() -> int:
    """The ``dmjd`` console script (and ``python -m dmjd``): ``main`` with Ctrl-C ignored once it
    returns, so that the interpreter's shutdown (loader workers, process groups) is never cut short
    by a traceback; the command is done by then. An interrupted command and a process of a
    distributed run end through ``end_process``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    code = main()
    distributed = sys.modules.get("dmjd.engine.distributed")  # loaded only by commands that can join one
    if code == EXIT_INTERRUPTED or (distributed is not None and distributed.joined()):
        end_process(code)
    return code


def end_process(code: int) -> NoReturn:
    """Exit with status ``code`` after running the exit handlers (the process group left, logging
    flushed, loader workers stopped) and flushing stdout and stderr, without finalising the interpreter.

    Two finalisations go wrong. DDP keeps gloo's worker threads alive past ``destroy_process_group``,
    and finalisation then frees tensors they still hold after the GIL is gone: a rank that finished
    its work died of SIGABRT (``terminate called without an active exception``; one two-process
    pre-training in ten on a busy machine, torchrun then killing the others). And after a Ctrl-C
    caught inside code run by ``exec`` (a dataclass being created), CPython's ``python -m`` ends the
    process by SIGINT instead of the status the command returned.
    """
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class _InterruptOnce:
    """A SIGINT handler that raises KeyboardInterrupt once, in the process that installed it: later
    signals are ignored while the command stops, and DataLoader workers forked from it ignore Ctrl-C
    (the terminal sends it to them too), leaving it to the main process."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.fired = False
        self.stopping = False  # the command is unwinding from the interrupt

    def __call__(self, _signum: int, _frame: FrameType | None) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if os.getpid() == self.pid:
            self.fired = True
            raise KeyboardInterrupt

    def unraisable(self, fallback: Callable[[Any], object]) -> Callable[[Any], None]:
        """A ``sys.unraisablehook`` that delivers again an interrupt this handler raised where Python
        cannot propagate it (a weakref callback, e.g. importlib's module-lock one, or a ``__del__``):
        there it was printed as "Exception ignored" and lost, and the command ran on to exit 0.
        While the command unwinds from the interrupt, the finalisers of objects it cut short in their
        construction (a DataLoader iterator without its workers' status) fail: that goes to the log
        at debug level, not the console. Anything else goes to ``fallback``."""

        def hook(info: Any) -> None:
            if self.stopping:
                logging.getLogger(__name__).debug("while stopping: %r in %r", info.exc_value, info.object)
                return
            if isinstance(info.exc_value, KeyboardInterrupt) and self.fired and os.getpid() == self.pid:
                self.fired = False
                signal.signal(signal.SIGINT, self)
                # Sent from a thread a moment later: raised here, it would be lost in this hook too.
                again = threading.Timer(0.01, os.kill, (self.pid, signal.SIGINT))
                again.daemon = True
                again.start()
                return
            fallback(info)

        return hook


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="dmjd: %(levelname)s: %(message)s")
    if not is_main_rank():  # one voice under torchrun: the console's warnings are rank 0's (train.rank_logs: the rest)
        for handler in logging.getLogger().handlers:
            handler.setLevel(logging.ERROR)
    try:
        check_output_places(args)
        return int(args.func(args) or 0)
    except InputError as err:  # caught before the engine is imported: a bad config needs no torch
        say(f"dmjd: error: {err}")
        return EXIT_BAD_INPUT
    except Exception as err:
        return _engine_exit_code(err)


def check_output_places(args: argparse.Namespace) -> None:
    """A command's ``--output-dir`` (and ``--output`` file's folder) can take its files: checked before
    the command prints or computes anything (``dmjd.outputs.check_output_place``, torch-free).

    Raises:
        OutputDirError: a file is in the way, the folder is read-only, or its disk is full.
    """
    from dmjd.outputs import check_output_place

    if getattr(args, "output_dir", None):
        check_output_place(args.output_dir)
    if getattr(args, "output", None):
        check_output_place(Path(args.output).parent, "--output")


def _engine_exit_code(err: Exception) -> int:
    """Print a run's known failure (resources, teacher weights, non-finite steps, a signal) as one
    line and return its exit code; any other exception is re-raised with its traceback."""
    from dmjd.engine import NonFiniteLossError, ResourceError, TrainingInterrupted
    from dmjd.targets import TeacherWeightsError

    if isinstance(err, (ResourceError, TeacherWeightsError, NonFiniteLossError)):
        say(f"dmjd: error: {err}")
        return EXIT_NONFINITE if isinstance(err, NonFiniteLossError) else EXIT_BAD_INPUT
    if isinstance(err, TrainingInterrupted):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the run has stopped: one line, whatever follows
        say(f"\ndmjd: {err}")  # on its own line, after the terminal's ^C
        return EXIT_INTERRUPTED
    raise err
