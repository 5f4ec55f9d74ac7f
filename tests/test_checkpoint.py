"""Checkpoint files: atomic save, safe load, discovery and rotation."""

import os
import pickle

import pytest
import torch

from dmjd.io.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)


def test_save_load_round_trip(tmp_path):
    state = {"model": {"w": torch.arange(4.0)}, "epoch": 3, "config": {"a": [1, 2]}}
    save_checkpoint(state, tmp_path / "c.pth")
    back = load_checkpoint(tmp_path / "c.pth")
    assert torch.equal(back["model"]["w"], state["model"]["w"]) and back["epoch"] == 3
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_crafted_pickle_is_refused_without_running_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"model": _Evil()}, f)
    with pytest.raises(CheckpointError, match="refusing"):
        load_checkpoint(tmp_path / "evil.pth")
    assert not (tmp_path / "pwned").exists()


def test_truncated_and_foreign_files(tmp_path):
    save_checkpoint({"model": {"w": torch.ones(1000)}}, tmp_path / "c.pth")
    data = (tmp_path / "c.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable or truncated"):
        load_checkpoint(tmp_path / "cut.pth")
    torch.save({"weights": 1}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a dmjd checkpoint"):
        load_checkpoint(tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pth")


def test_failed_save_keeps_previous_file(tmp_path):
    save_checkpoint({"model": {"v": torch.tensor(1)}}, tmp_path / "c.pth")

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(Exception):  # noqa: B017  (whatever the pickler raises; the old file must survive)
        save_checkpoint({"model": Boom()}, tmp_path / "c.pth")
    assert load_checkpoint(tmp_path / "c.pth")["model"]["v"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_latest_and_prune(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for epoch in (2, 10, 4):
        save_checkpoint({"model": {}}, tmp_path / f"checkpoint-{epoch}.pth")
    assert latest_checkpoint(tmp_path).name == "checkpoint-10.pth"
    prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*.pth")) == ["checkpoint-10.pth", "checkpoint-4.pth"]
    save_checkpoint({"model": {}}, tmp_path / "checkpoint-last.pth")
    assert latest_checkpoint(tmp_path).name == "checkpoint-last.pth"
