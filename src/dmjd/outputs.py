"""Whether an output folder can take a command's files, told before anything is printed or computed.

Torch-free and side-effect free (nothing is created or written), so that the CLI checks ``--output-dir``
first: a file in the way, a read-only folder or a full disk is one line, not a failure after the
recipe's print-out or a run's first epoch. ``dmjd.engine.run_dir.check_writable`` writes a probe when
the run starts.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from dmjd.errors import InputError

MIN_FREE_BYTES = 16 * 2**20  # below this not even a log, a config and a small checkpoint fit


class OutputDirError(InputError):
    """The output folder cannot be written (a file in the way, read-only, its disk full), already holds a
    run (and neither resume nor overwrite was asked), or is locked by a running one."""


def output_place_problem(folder: str | Path, option: str = "--output-dir") -> str | None:
    """Why ``folder`` (existing or to be created) cannot take output files, in one line; None when it can.

    Reads the folder, or its nearest existing parent, without writing: not a folder (a file is in the
    way), not writable (``os.access``: permissions or a read-only file system), or under
    ``MIN_FREE_BYTES`` free on its device.
    """
    path = Path(folder).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        return f"{option} {folder}: {existing} is a file, not a folder; remove it or choose another {option}"
    if not os.access(existing, os.W_OK | os.X_OK):
        why = "a read-only file system" if _read_only_mount(existing) else "no permission to write there"
        return f"{option} {folder}: {existing} cannot be written ({why}); choose another {option}"
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        return (f"{option} {folder}: no space left on the device of {existing} ({free / 2**20:.1f} MiB free); free "
                f"some space or choose another {option}")  # fmt: skip
    return None


def check_output_place(folder: str | Path, option: str = "--output-dir") -> None:
    """Refuse an output folder that cannot take files (``output_place_problem``).

    Raises:
        OutputDirError: the one-line reason.
    """
    problem = output_place_problem(folder, option)
    if problem is not None:
        raise OutputDirError(problem)


def _read_only_mount(path: Path) -> bool:
    """Whether ``path`` lies on a file system mounted read-only (False where the OS cannot tell)."""
    return hasattr(os, "statvfs") and bool(os.statvfs(path).f_flag & getattr(os, "ST_RDONLY", 0))
