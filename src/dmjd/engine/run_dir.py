"""A run folder: when it holds a run, clearing it for a new one, and checking it can be written.

A folder holds a run once it holds a checkpoint. The files a start leaves before its first
checkpoint (config, metrics, logs of a start that failed; recognised by their ``metrics.jsonl``)
are cleared by the next start, never an obstacle; a folder without ``metrics.jsonl`` is not touched.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from dmjd.engine import checkpoint as ckpt
from dmjd.engine.metrics import EVALS_FILE, read_metrics
from dmjd.errors import InputError

RUN_FILES = (
    "metrics.jsonl", "config.yaml", "summary.json", "log.txt", "tensorboard", "reconstruction.png", "curves.png",
    "curves.json", ckpt.LAST,
)  # fmt: skip


class OutputDirError(InputError):
    """The output folder already holds a run (and neither resume nor overwrite was asked), or
    it cannot be written."""


def holds_run(folder: str | Path) -> bool:
    """Whether ``folder`` holds a run: a checkpoint to resume from."""
    return Path(folder).is_dir() and ckpt.latest_checkpoint(folder) is not None


def check_writable(folder: str | Path) -> Path:
    """Create ``folder`` if needed and write a probe file into it.

    Raises:
        OutputDirError: the folder cannot be created or written, naming it and the reason.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise OutputDirError(f"cannot write to output dir {folder}: {err.strerror or err}") from None
    return folder


def evaluation_files(folder: Path) -> list[Path]:
    """The files the evaluations recorded in ``folder/evals.jsonl`` wrote inside ``folder``."""
    log = folder / EVALS_FILE
    root = folder.resolve()
    records = read_metrics(log) if log.is_file() else []
    paths = [(folder / name).resolve() for record in records for name in record.get("files", [])]
    return [path for path in paths if path != root and path.is_relative_to(root)]


def clear_run(folder: str | Path) -> None:
    """Delete a run's files: checkpoints, metrics, logs, figures, and every file an evaluation
    recorded in ``evals.jsonl`` (fine-tuning runs included); other files are left alone."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    doomed = [*evaluation_files(folder), *(folder / name for name in (*RUN_FILES, EVALS_FILE))]
    for path in [*doomed, *ckpt.numbered_checkpoints(folder)]:
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def prepare_output_dir(output_dir: str | Path, resume: bool, overwrite: bool, is_main: bool) -> None:
    """Make ``output_dir`` ready for a run: refuse a folder that holds one unless resuming or
    overwriting, clear a replaced run or a failed start's files, check it can be written.

    Args:
        resume: continue the run in the folder (when it holds none, the run starts fresh).
        overwrite: replace the run in the folder.
        is_main: only the main process clears and writes.

    Raises:
        OutputDirError: the folder holds a run and neither ``resume`` nor ``overwrite`` is given,
            or it cannot be written.
    """
    output_dir = Path(output_dir)
    run_here = holds_run(output_dir)
    if run_here and not resume and not overwrite:
        found = sorted(p.name for p in [output_dir / ckpt.LAST, *ckpt.numbered_checkpoints(output_dir)] if p.exists())
        raise OutputDirError(
            f"{output_dir} already holds a run ({', '.join(found[:3])}); pass --resume auto to continue it, "
            "--overwrite to replace it, or choose another --output-dir"
        )
    if not is_main:
        return
    if (run_here and overwrite and not resume) or (not run_here and (output_dir / "metrics.jsonl").is_file()):
        clear_run(output_dir)
    check_writable(output_dir)
