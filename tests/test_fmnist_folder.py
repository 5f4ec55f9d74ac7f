"""tools/make_fmnist_folder.py: a small labelled folder drawn from Fashion-MNIST (issue 31's target data)."""

import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import load_tool


def _tool():
    return load_tool("make_fmnist_folder")


def _write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Fashion-MNIST's gzip'd IDX files (Debian's layout): magic, big-endian sizes, then the bytes."""
    n, h, w = images.shape
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
        f.write(np.array([0x803, n, h, w], ">i4").tobytes() + images.astype(np.uint8).tobytes())
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(np.array([0x801, n], ">i4").tobytes() + labels.astype(np.uint8).tobytes())


def test_per_class_draw_takes_n_of_each_class_all_of_a_smaller_one_and_follows_the_seed():
    draw = _tool().per_class_draw
    labels = np.array([0] * 10 + [1] * 2 + [2] * 7)
    chosen = draw(labels, 3, seed=0)
    assert np.bincount(labels[chosen]).tolist() == [3, 2, 3] and (np.diff(chosen) > 0).all()
    assert (draw(labels, 3, seed=0) == chosen).all() and not (draw(labels, 3, seed=1) == chosen).all()


def test_the_tool_writes_train_and_val_class_folders_from_the_two_splits(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DMJD_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "fmnist"
    src.mkdir()
    rng = np.random.default_rng(0)
    # image i of a split holds the value i everywhere, so each written file says where it came from
    train, test = np.arange(40) % 10, np.arange(20) % 10
    _write_idx(src, "train", np.broadcast_to(np.arange(40)[:, None, None], (40, 28, 28)), train)
    _write_idx(src, "t10k", np.broadcast_to(100 + np.arange(20)[:, None, None], (20, 28, 28)), rng.permutation(test))
    tool = _tool()
    out = tmp_path / "out"
    assert tool.main([str(out), "--path", str(src), "--train-per-class", "3", "--test-per-class", "1"]) == 0
    assert capsys.readouterr().out.strip() == "train/: 30 images, val/: 10 images"
    assert sorted(p.name for p in (out / "train").iterdir())[-2:] == ["T-shirt_top", "Trouser"]
    values = {split: {int(np.asarray(Image.open(f)).max()) for f in (out / split).rglob("*.png")} for split in ("train", "val")}
    assert values["train"] <= set(range(40)) and values["val"] <= set(range(100, 120)) and len(values["train"]) == 30
    for label, name in enumerate(("T-shirt_top", "Trouser")):  # each image lies in its own class's folder
        assert all(int(np.asarray(Image.open(f)).max()) % 10 == label for f in (out / "train" / name).iterdir())
    assert tool.main([str(out), "--path", str(src)]) == 2  # an existing folder: one line, nothing written
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--train-per-class", "--test-per-class"])
def test_a_count_below_one_is_one_line(tmp_path, capsys, option):
    assert _tool().main([str(tmp_path / "out"), option, "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "at least 1" in err and not (tmp_path / "out").exists()
