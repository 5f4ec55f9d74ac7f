"""Run logging: ``metrics.jsonl`` (one JSON object per line, mirrored to TensorBoard when installed),
the plain ``log.txt`` of printed lines, and ``evals.jsonl``, the record of every evaluation of a run."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

EVALS_FILE = "evals.jsonl"


class MetricsLogger:
    """Appends metric records to ``<output_dir>/metrics.jsonl`` (and TensorBoard scalars), and
    printed lines to ``<output_dir>/log.txt``.

    Only the process that owns the run (rank 0) should create one; appending keeps the lines of a
    resumed run after those of the interrupted one.
    """

    def __init__(self, output_dir: str | Path, tensorboard: bool = True) -> None:
        self.path = Path(output_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", buffering=1)  # noqa: SIM115 - open for the run, closed by close()
        self._text = open(self.path.parent / "log.txt", "a", buffering=1)  # noqa: SIM115
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(output_dir) / "tensorboard"))
            except ImportError:
                self._tb = None

    def log(self, record: dict[str, Any]) -> None:
        """Write one record; numbers are rounded to 6 significant digits, NaN/inf become strings."""
        self._file.write(json.dumps(round_floats(record)) + "\n")
        if self._tb is not None and "step" in record:
            kind = record.get("kind", "train")
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch") and math.isfinite(value):
                    self._tb.add_scalar(f"{kind}/{key}", value, record["step"])

    def print(self, line: str) -> None:
        """Print ``line`` and append it to ``log.txt``."""
        print(line, flush=True)
        self.write(line)

    def write(self, line: str) -> None:
        """Append ``line`` to ``log.txt`` only (when the console gets it another way)."""
        self._text.write(line + "\n")

    def text_bytes(self) -> int:
        """The size of ``log.txt`` so far (a checkpoint keeps it: a resume cuts the file back to it)."""
        self._text.flush()
        return self._text.tell()

    def close(self) -> None:
        self._file.close()
        self._text.close()
        if self._tb is not None:
            self._tb.close()


def round_floats(value: Any, digits: int = 6) -> Any:
    """``value`` with every float (inside dicts and lists too) rounded to ``digits`` significant
    digits; NaN and infinities become strings (JSON has no literal for them)."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}") if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {k: round_floats(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [round_floats(v, digits) for v in value]
    return value


def bars_shown(progress: bool) -> bool:
    """Whether progress bars draw: ``progress`` is asked for and stdout and stderr (where tqdm draws) are
    both terminals. Written to a file or a pipe, every redraw would be one more line of the log (``make
    demo > log`` held thousands), so runs print a plain line per logged interval there instead."""
    return progress and sys.stdout.isatty() and sys.stderr.isatty()


def progress_line(
    record: dict[str, Any], epochs: int | None, images_per_s: float | None = None, bad_images: int | None = None
) -> str:
    """One plain log line of a metrics record (``kind`` train, epoch or eval): position, losses,
    learning rate, images/s and effective training epochs, or the evaluation's accuracies. An epoch
    record with ``complete: false`` (cut by the time budget or ``optim.max_steps``) says where it stopped,
    and an eval record with ``mid_epoch: true`` at which step of which epoch it was made.

    Args:
        epochs: the run's epochs, shown as ``epoch e/epochs``; None: not known yet. A record's ``epoch`` is
            the 1-based epoch it belongs to (an eval's: the epoch it follows or is in; 0 before training).
        images_per_s: throughput (default: the record's ``images_per_s``).
        bad_images: unreadable images met in the epoch, shown when given.
    """
    kind, epoch, ete = record.get("kind", "train"), record.get("epoch", 0), record.get("ete")
    of = f"/{epochs}" if epochs is not None else ""  # None: not known yet (a budget being planned)
    if kind == "eval":
        scores = [f"{k} {v:.4f}" for k, v in record.items() if isinstance(v, float) and k not in ("ete", "time")]
        where = f"at step {record.get('step', 0)} of epoch {epoch}" if record.get("mid_epoch") else f"after epoch {epoch}"
        return f"dmjd: eval {where}{of}" + (f" (ETE {ete:.2f})" if ete is not None else "") + ": " + ", ".join(scores)
    if kind == "epoch":
        state = " done" if record.get("complete", True) else f" stopped at step {record.get('step', 0)}"
    else:
        state = f" step {record.get('step', 0)}"
    where = f"epoch {epoch}{of}" + state
    terms = [f"{key.removeprefix('loss_')} {record[key]:.4f}" for key in ("loss_mim", "loss_vis") if key in record]
    parts = [where, f"loss {record['loss']:.4f}" + (f" ({', '.join(terms)})" if terms else "")]
    if "lr" in record:
        parts.append(f"lr {record['lr']:.3g}")
    speed = images_per_s if images_per_s is not None else record.get("images_per_s")
    if speed is not None:
        parts.append(f"{speed:,.0f} images/s")
    if ete is not None:
        parts.append(f"ETE {ete:.2f}")
    if bad_images is not None:
        parts.append(f"{bad_images} unreadable images")
    return "dmjd: " + " | ".join(parts)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Read a ``metrics.jsonl`` (or ``evals.jsonl``) file back as a list of records."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def cut_run_logs(folder: str | Path, step: int, log_bytes: int | None = None) -> int:
    """Cut a run's logs back to a checkpoint before resuming from it, so that what the resumed run
    redoes is not logged twice: ``metrics.jsonl`` loses the records after optimizer step ``step``,
    ``log.txt`` is cut to ``log_bytes`` (its size when the checkpoint was saved; None leaves it).

    Returns:
        The number of ``metrics.jsonl`` records dropped.
    """
    folder = Path(folder)
    metrics, text = folder / "metrics.jsonl", folder / "log.txt"
    dropped = 0
    if metrics.is_file():
        lines = metrics.read_text().splitlines(keepends=True)
        kept = [line for line in lines if _record_step(line) <= step]
        dropped = len(lines) - len(kept)
        if dropped:
            partial = metrics.with_suffix(".jsonl.tmp")
            partial.write_text("".join(kept))
            os.replace(partial, metrics)
    if log_bytes is not None and text.is_file() and text.stat().st_size > log_bytes:
        os.truncate(text, log_bytes)
    return dropped


def _record_step(line: str) -> float:
    """A ``metrics.jsonl`` line's optimizer step; a blank line or one cut short by a kill counts as
    after every step (it is dropped)."""
    try:
        return json.loads(line).get("step", 0)
    except ValueError:
        return math.inf


def append_eval(folder: str | Path, record: dict[str, Any]) -> Path:
    """Append one evaluation record (rounded) to ``folder/evals.jsonl``; returns the file."""
    path = Path(folder) / EVALS_FILE
    with open(path, "a") as f:
        f.write(json.dumps(round_floats(record)) + "\n")
    return path
