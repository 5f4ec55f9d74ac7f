"""Atomic file writes: a result file is either the old one or the whole new one, never half of it.

The bytes go to a temp file in the same folder, are flushed to disk, and replace the target with one
rename; an error, a kill or Ctrl-C before the rename leaves the target as it was and removes the temp
file (a hard kill can leave the temp file, never a partial target).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_writer(path: str | Path) -> Iterator[BinaryIO]:
    """``with atomic_writer(path) as f: ...`` writes ``path`` atomically from a binary file object.

    The file gets the mode of any new file (``file_mode``), not the temp file's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; returns ``path``."""
    with atomic_writer(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)
    return Path(path)


@contextmanager
def atomic_files(folder: str | Path) -> Iterator[Path]:
    """``with atomic_files(folder) as tmp: ...``: files written into ``tmp`` (a temp folder inside
    ``folder``) then each replace their namesake in ``folder`` by one rename; an error or Ctrl-C before
    leaves ``folder``'s files as they were. ``tmp`` is removed either way."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder))
    try:
        yield tmp
        for path in sorted(tmp.iterdir()):
            os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def file_mode() -> int:
    """The mode a new file gets from the process umask (0644 under the usual umask 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask
