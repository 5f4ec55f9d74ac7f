"""A run folder: when it holds a run, clearing it for a new one, and checking it can be written.

A folder holds a run once it holds a checkpoint. The files a start leaves before its first
checkpoint (config, metrics, logs of a start that failed; recognised by their ``metrics.jsonl``)
are cleared by the next start, never an obstacle; a folder without ``metrics.jsonl`` is not touched.

A pre-training run locks its folder (``.dmjd.lock``, see ``RunLock``) from its start, before anything
is cleared or written, until it ends: a second run into the same folder is refused, not interleaved.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import weakref
from pathlib import Path

from dmjd.engine.metrics import EVALS_FILE, read_metrics
from dmjd.io import checkpoint as ckpt
from dmjd.outputs import OutputDirError, output_place_problem

RUN_FILES = (
    "metrics.jsonl", "config.yaml", "summary.json", "log.txt", "tensorboard", "reconstruction.png", "curves.png",
    "curves.json", ckpt.LAST,
)  # fmt: skip


LOCK_FILE = ".dmjd.lock"
UNREADABLE_GRACE_S = 5.0  # an unreadable lock younger than this is being written, not stale


def _pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_if_ours(path: Path, token: str) -> None:
    """Delete the lock file at ``path`` if it still holds ``token`` (not a later owner's lock)."""
    try:
        if path.read_text() == token:
            path.unlink()
    except OSError:
        pass


class RunLock:
    """An exclusive lock on a run folder: the file ``.dmjd.lock`` holding the owner's pid, host and
    start time, created atomically (``O_CREAT | O_EXCL``).

    A lock of a process that no longer runs on this host is stale and taken over (with a note);
    one of this very process (an earlier ``Pretrainer`` that was not run) is taken over silently.
    A lock from another host cannot be checked and always refuses. The lock is released by
    ``release``, and at the latest when the object is collected or the interpreter exits; a
    killed process leaves a stale lock, which the next run takes over.

    Raises:
        OutputDirError: another live process holds the folder, naming its pid, host and start.
    """

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / LOCK_FILE
        owner = {
            "pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "id": os.urandom(8).hex(),  # tells this lock from a later one of the same process
        }  # fmt: skip
        self._token = json.dumps(owner)
        while not self._create():
            self._take_over_or_refuse()
        self._release = weakref.finalize(self, _remove_if_ours, self.path, self._token)

    def _create(self) -> bool:
        """Create the lock file with our owner record; False when it already exists."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(self._token)
        return True

    def _take_over_or_refuse(self) -> None:
        """Remove a stale lock (or one of this process); refuse a live owner's."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return  # released meanwhile: try again
        try:
            owner = json.loads(text)
            pid, host, since = int(owner["pid"]), str(owner["host"]), str(owner.get("since", "?"))
        except (ValueError, KeyError, TypeError):
            try:
                fresh = time.time() - self.path.stat().st_mtime < UNREADABLE_GRACE_S
            except FileNotFoundError:
                return  # released meanwhile: try again
            if fresh:
                time.sleep(0.1)  # another run has just created it and is writing its owner: look again
                return
            pid, host, since = -1, socket.gethostname(), "?"  # unreadable for long (a write cut short): stale
        here = host == socket.gethostname()
        if here and pid != os.getpid() and pid > 0 and _pid_alive(pid):
            raise OutputDirError(
                f"{self.path.parent} is in use by another run (pid {pid} on {host}, since {since}); wait for it to end "
                "or choose another --output-dir"
            )
        if not here:
            raise OutputDirError(
                f"{self.path.parent} is locked by a run on another host (pid {pid} on {host}, since {since}); if that "
                f"run has ended, delete {self.path}, or choose another --output-dir"
            )
        if pid != os.getpid():
            print(f"dmjd: note: taking over the stale lock of pid {pid} (no longer running, since {since}) on "
                  f"{self.path.parent}")  # fmt: skip
        _remove_if_ours(self.path, text)

    def release(self) -> None:
        """Remove the lock file (if it is still ours); calling it again does nothing."""
        self._release()


def holds_run(folder: str | Path) -> bool:
    """Whether ``folder`` holds a run: a checkpoint to resume from."""
    return Path(folder).is_dir() and ckpt.latest_checkpoint(folder) is not None


def check_writable(folder: str | Path) -> Path:
    """Create ``folder`` if needed and write a probe file into it (``dmjd.outputs.output_place_problem``
    first, for a clear reason).

    Raises:
        OutputDirError: the folder cannot be created or written, naming it and the reason.
    """
    folder = Path(folder)
    problem = output_place_problem(folder, "output dir")
    if problem is not None:
        raise OutputDirError(problem)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
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


def prepare_output_dir(
    output_dir: str | Path, resume: bool, overwrite: bool, is_main: bool, lock: bool = False
) -> RunLock | None:
    """Make ``output_dir`` ready for a run: lock it (when asked), refuse a folder that holds a run
    unless resuming or overwriting, clear a replaced run or a failed start's files, check it can be
    written.

    Args:
        resume: continue the run in the folder (when it holds none, the run starts fresh).
        overwrite: replace the run in the folder.
        is_main: only the main process locks, clears and writes.
        lock: take the folder's ``RunLock`` before anything is cleared (pre-training; evaluations
            writing into a run folder do not lock).

    Returns:
        The lock, held until its ``release`` (None without ``lock`` or off the main process).

    Raises:
        OutputDirError: the folder is locked by another live run, holds a run and neither ``resume``
            nor ``overwrite`` is given, or cannot be written.
    """
    output_dir = Path(output_dir)
    held = RunLock(check_writable(output_dir)) if lock and is_main else None
    try:
        run_here = holds_run(output_dir)
        if run_here and not resume and not overwrite:
            found = sorted(p.name for p in [output_dir / ckpt.LAST, *ckpt.numbered_checkpoints(output_dir)] if p.exists())
            raise OutputDirError(
                f"{output_dir} already holds a run ({', '.join(found[:3])}); pass --resume auto to continue it, "
                "--overwrite to replace it, or choose another --output-dir"
            )
        if is_main:
            if (run_here and overwrite and not resume) or (not run_here and (output_dir / "metrics.jsonl").is_file()):
                clear_run(output_dir)
            check_writable(output_dir)
    except BaseException:
        if held is not None:
            held.release()
        raise
    return held
