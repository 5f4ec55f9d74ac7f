"""dmjd.engine.run_dir on its own: when a folder holds a run, what a new start clears and keeps, the
write check, and the parts of the run lock that tests/test_interruptions.py does not reach (a lock
of this process or of another host, its release)."""

from __future__ import annotations

import gc
import json
import os
import re
import socket

import pytest

from dmjd.engine.run_dir import (
    LOCK_FILE,
    OutputDirError,
    RunLock,
    check_writable,
    clear_run,
    holds_run,
    prepare_output_dir,
)
from dmjd.io.checkpoint import save_checkpoint


def _files(folder) -> set[str]:
    """Every path under ``folder``, relative to it."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _write(folder, *names: str) -> None:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(name)


def _run_folder(folder, *checkpoints: str):
    """A folder with a run's files, the given checkpoints, and a file of the user's own."""
    _write(folder, "metrics.jsonl", "config.yaml", "log.txt", "summary.json", "tensorboard/events.1", "notes.txt")
    for name in checkpoints:
        save_checkpoint({"model": {}}, folder / name)
    return folder


# ------------------------------------------------------------------------ a run is a checkpoint
def test_a_folder_holds_a_run_once_it_holds_a_checkpoint(tmp_path):
    assert not holds_run(tmp_path / "missing")
    _write(tmp_path, "metrics.jsonl", "config.yaml")
    assert not holds_run(tmp_path)
    save_checkpoint({"model": {}}, tmp_path / "checkpoint-4.pth")
    assert holds_run(tmp_path)


def test_a_folder_holding_a_run_is_refused_touched_by_nothing_and_left_unlocked(tmp_path):
    _run_folder(tmp_path, "checkpoint-2.pth", "checkpoint-last.pth")
    before = _files(tmp_path)
    for is_main in (True, False):
        with pytest.raises(OutputDirError) as err:
            prepare_output_dir(tmp_path, resume=False, overwrite=False, is_main=is_main, lock=True)
        assert str(err.value) == (
            f"{tmp_path} already holds a run (checkpoint-2.pth, checkpoint-last.pth); pass --resume auto to continue "
            "it, --overwrite to replace it, or choose another --output-dir"
        )
    assert _files(tmp_path) == before  # the lock taken for the check was released


def test_resuming_keeps_everything_even_with_overwrite(tmp_path):
    _run_folder(tmp_path, "checkpoint-last.pth")
    before = _files(tmp_path)
    assert prepare_output_dir(tmp_path, resume=True, overwrite=False, is_main=True) is None
    assert prepare_output_dir(tmp_path, resume=True, overwrite=True, is_main=True) is None
    assert _files(tmp_path) == before


def test_overwrite_clears_the_run_and_what_its_evaluations_wrote_inside_the_folder_only(tmp_path):
    run = _run_folder(tmp_path / "run", "checkpoint-2.pth", "checkpoint-10.pth", "checkpoint-last.pth")
    _write(run, "knn.json", "probe/linprobe.json", "curves.png", "my-figure.png")
    _write(tmp_path, "outside.json")
    records = [{"kind": "knn", "files": ["knn.json"]}, {"kind": "linprobe", "files": ["probe", "../outside.json", "."]}]
    (run / "evals.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    prepare_output_dir(run, resume=False, overwrite=True, is_main=True)
    assert _files(run) == {"notes.txt", "my-figure.png"}
    assert (tmp_path / "outside.json").is_file()


def test_a_failed_start_is_cleared_by_the_main_process_only(tmp_path):
    _write(tmp_path, "metrics.jsonl", "config.yaml", "log.txt", "notes.txt")
    before = _files(tmp_path)
    assert prepare_output_dir(tmp_path, resume=False, overwrite=False, is_main=False, lock=True) is None
    assert _files(tmp_path) == before  # another process neither clears nor locks
    prepare_output_dir(tmp_path, resume=False, overwrite=False, is_main=True)
    assert _files(tmp_path) == {"notes.txt"}


def test_clear_run_of_a_missing_folder_does_nothing(tmp_path):
    clear_run(tmp_path / "missing")
    assert not (tmp_path / "missing").exists()


# ------------------------------------------------------------------------------ write check
def test_check_writable_creates_the_folder_and_leaves_no_probe(tmp_path):
    folder = tmp_path / "a" / "b"
    assert check_writable(folder) == folder
    assert folder.is_dir() and not list(folder.iterdir())


def test_an_unwritable_folder_is_named_with_the_reason(tmp_path):
    _write(tmp_path, "file")
    expected = f"output dir {tmp_path / 'file' / 'run'}: {tmp_path / 'file'} is a file, not a folder; remove it or choose"
    with pytest.raises(OutputDirError, match=f"^{re.escape(expected)}"):
        check_writable(tmp_path / "file" / "run")


# -------------------------------------------------------------------------------- run lock
def _owner(folder) -> dict:
    return json.loads((folder / LOCK_FILE).read_text())


def test_the_lock_file_names_its_owner(tmp_path):
    lock = RunLock(tmp_path)
    owner = _owner(tmp_path)
    assert (owner["pid"], owner["host"]) == (os.getpid(), socket.gethostname())
    assert set(owner) == {"pid", "host", "since", "id"}
    lock.release()
    assert not (tmp_path / LOCK_FILE).exists()
    lock.release()  # a second release does nothing


def test_a_lock_of_this_process_is_taken_over_silently_and_its_release_spares_the_new_one(tmp_path, capsys):
    first = RunLock(tmp_path)
    first_id = _owner(tmp_path)["id"]
    second = RunLock(tmp_path)
    assert _owner(tmp_path)["id"] != first_id and capsys.readouterr().out == ""
    first.release()
    assert _owner(tmp_path)["id"] != first_id  # the second lock is still there
    second.release()
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_lock_from_another_host_is_refused_and_kept(tmp_path):
    owner = {"pid": os.getpid(), "host": "elsewhere.example", "since": "2026-12-01 10:00:00 UTC"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(owner))
    with pytest.raises(OutputDirError) as err:
        RunLock(tmp_path)
    assert str(err.value) == (
        f"{tmp_path} is locked by a run on another host (pid {os.getpid()} on elsewhere.example, since 2026-12-01 "
        f"10:00:00 UTC); if that run has ended, delete {tmp_path / LOCK_FILE}, or choose another --output-dir"
    )
    assert _owner(tmp_path) == owner


def test_a_lock_no_longer_referenced_is_released(tmp_path):
    lock = RunLock(tmp_path)
    assert (tmp_path / LOCK_FILE).exists()
    del lock
    gc.collect()
    assert not (tmp_path / LOCK_FILE).exists()
