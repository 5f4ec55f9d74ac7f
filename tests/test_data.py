"""Data sets, transforms and the deterministic batch sampler."""

import numpy as np
import pytest
import torch
from PIL import Image

from dmjd.data import (
    DataError,
    EpochBatchSampler,
    ImageFiles,
    SeededSamples,
    build_dataset,
    embedded_sample,
    eval_transform,
    pretrain_transform,
)
from dmjd.data.datasets import DEBIAN_FASHION_MNIST


def test_embedded_sample_splits_and_labels():
    t = eval_transform(32, 1)
    train, test = embedded_sample("train", t), embedded_sample("test", t)
    assert (len(train), len(test)) == (4000, 1000)
    assert np.bincount(test.labels).tolist() == [100] * 10
    x, y, skipped = train[0]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    assert 0 <= y < 10 and skipped == 0
    rgb, _, _ = embedded_sample("test", eval_transform(32, 3))[0]
    assert rgb.shape == (3, 32, 32) and torch.equal(rgb[0], rgb[1])


def test_seeded_augmentation_is_a_function_of_epoch_and_index():
    ds = SeededSamples(embedded_sample("train", pretrain_transform(32, 1, (0.2, 1.0))), seed=3)
    a, b = ds[7][0], ds[(0, 7)][0]
    assert torch.equal(a, b)
    ds.set_epoch(1)
    assert not torch.equal(a, ds[7][0])
    assert torch.equal(ds[7][0], ds[(1, 7)][0])


def test_sampler_partitions_global_batches_across_ranks():
    one = EpochBatchSampler(100, 8, seed=1)
    two = [EpochBatchSampler(100, 4, seed=1, rank=r, world_size=2) for r in range(2)]
    for s in [one, *two]:
        s.set_epoch(2)
    batches = list(one)
    ranked = [list(s) for s in two]
    assert len(batches) == 12 == len(ranked[0])
    for step, batch in enumerate(batches):
        assert batch == ranked[0][step] + ranked[1][step]
    flat = [i for b in batches for i in b]
    assert len(set(flat)) == len(flat)  # no image twice in an epoch
    assert {e for e, _ in flat} == {2}  # the epoch travels with each index


def test_sampler_resumes_mid_epoch_and_changes_with_epoch():
    s = EpochBatchSampler(50, 5, seed=0)
    s.set_epoch(0)
    full = list(s)
    s.set_epoch(0, start_step=4)
    assert list(s) == full[4:] and len(s) == len(full) - 4
    s.set_epoch(1)
    assert list(s) != full
    with pytest.raises(ValueError, match="fewer than one global batch"):
        EpochBatchSampler(3, 4)


def _write_images(folder, modes):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, mode in enumerate(modes):
        if mode == "I;16":
            img = Image.fromarray(rng.integers(0, 65535, (20, 30), dtype=np.uint16))
        else:
            img = Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).convert(mode)
        img.save(folder / f"img{i}.{'jpg' if mode == 'CMYK' else 'png'}")


def test_image_folder_with_and_without_labels(tmp_path):
    _write_images(tmp_path / "labelled" / "cat", ["RGB", "L"])
    _write_images(tmp_path / "labelled" / "dog", ["RGBA", "P", "I;16"])
    ds = ImageFiles(tmp_path / "labelled", eval_transform(16, 3))
    assert ds.classes == ("cat", "dog") and len(ds) == 5
    assert sorted(ds[i][1] for i in range(5)) == [0, 0, 1, 1, 1]
    assert all(ds[i][0].shape == (3, 16, 16) for i in range(5))
    _write_images(tmp_path / "flat", ["RGB", "CMYK"])
    flat = ImageFiles(tmp_path / "flat", eval_transform(16, 1))
    assert [flat[i][1] for i in range(2)] == [-1, -1] and flat[1][0].shape == (1, 16, 16)


def test_bad_files_are_skipped_and_flagged(tmp_path, caplog):
    _write_images(tmp_path, ["RGB", "RGB"])
    (tmp_path / "img0.png").write_bytes(b"")  # zero bytes
    good = (tmp_path / "img1.png").read_bytes()
    (tmp_path / "img2.png").write_bytes(good[: len(good) // 2])  # truncated
    (tmp_path / "img3.jpg").write_text("not an image")
    ds = ImageFiles(tmp_path, eval_transform(8, 3))
    with caplog.at_level("WARNING", logger="dmjd.data.datasets"):
        items = [ds[i] for i in range(len(ds))]
    assert [flag for _, _, flag in items] == [1, 0, 1, 1]
    # one logged line per unreadable file, naming it
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3 and all("\n" not in m and m.startswith("skipping unreadable image") for m in messages)
    assert {m.split()[3].rstrip(":") for m in messages} == {str(tmp_path / n) for n in ("img0.png", "img2.png", "img3.jpg")}


def test_missing_or_empty_data_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_dataset("imagefolder", "train", eval_transform(8, 3), str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        build_dataset("imagefolder", "train", eval_transform(8, 3), str(tmp_path / "empty"))
    with pytest.raises(DataError, match="choose one of"):
        build_dataset("imagenet22k", "train", eval_transform(8, 3))
    with pytest.raises(DataError, match="download"):
        build_dataset("cifar10", "train", eval_transform(8, 3), str(tmp_path / "empty"))


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_package(tmp_path, monkeypatch):
    monkeypatch.setenv("DMJD_CACHE", str(tmp_path))
    train = build_dataset("fashion_mnist", "train", eval_transform(28, 1))
    test = build_dataset("fashion_mnist", "test", eval_transform(28, 1))
    assert (len(train), len(test)) == (60000, 10000)
    assert test[0][0].shape == (1, 28, 28)


def test_grey_warning_when_colour_images_meet_a_one_channel_model(tmp_path):
    from conftest import tiny_config
    from dmjd.engine.training_data import grey_warning

    for name, mode in (("colour", "RGB"), ("grey", "L")):
        (tmp_path / name / "a").mkdir(parents=True)
        Image.new(mode, (8, 8)).save(tmp_path / name / "a" / "x.png")
    colour = ["data.name=imagefolder", f"data.path={tmp_path / 'colour'}", "data.limit=null"]
    assert "model.in_chans=3" in grey_warning(tiny_config(*colour, "model.in_chans=1"))
    assert grey_warning(tiny_config(*colour, "model.in_chans=3")) is None
    assert grey_warning(tiny_config("data.name=imagefolder", f"data.path={tmp_path / 'grey'}", "model.in_chans=1")) is None
    assert grey_warning(tiny_config("data.name=embedded", "model.in_chans=1")) is None


def _split_tree(root, splits, classes=("cat", "dog")):
    """An ImageFolder tree: one 8 px image per class and split, grey levels telling the splits apart."""
    for s, split in enumerate(splits):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            Image.new("L", (8, 8), color=60 * s).save(root / split / c / "0.png")


def test_imagefolder_split_names_resolve_to_the_tree_folders(tmp_path):
    from dmjd.data import load_image_array
    from dmjd.data.datasets import imagefolder_split

    _split_tree(tmp_path / "tree", ("train", "val"))
    for path in (tmp_path / "tree", tmp_path / "tree" / "train"):
        assert imagefolder_split(path, "train") == tmp_path / "tree" / "train"
        assert imagefolder_split(path, "test") == imagefolder_split(path, "val") == tmp_path / "tree" / "val"
    test = load_image_array("imagefolder", "test", str(tmp_path / "tree"), 8, 1)
    assert test.labels.tolist() == [0, 1] and (test.images == 60).all()  # val's cat and dog, not train + val
    assert build_dataset("imagefolder", "test", eval_transform(8, 1), str(tmp_path / "tree")).classes == ("cat", "dog")
    _split_tree(tmp_path / "other", ("train", "test"))
    assert imagefolder_split(tmp_path / "other", "val") == tmp_path / "other" / "test"


def test_imagefolder_without_held_out_folder_is_train_data_only(tmp_path):
    from dmjd.data.datasets import imagefolder_split

    for i in range(2):  # a flat folder: no labels to hold a test split out by (a class folder has one)
        (tmp_path / "flat").mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8)).save(tmp_path / "flat" / f"{i}.png")
    assert imagefolder_split(tmp_path / "flat", "train") == tmp_path / "flat"
    for split in ("test", "val"):
        with pytest.raises(DataError, match=r"no test split|no val split") as err:
            build_dataset("imagefolder", split, eval_transform(8, 1), str(tmp_path / "flat"))
        assert "\n" not in str(err.value) and f"{tmp_path / 'flat'}/val" in str(err.value)
    _split_tree(tmp_path / "half", ("val",))
    with pytest.raises(DataError, match="no train split"):
        imagefolder_split(tmp_path / "half", "train")  # a tree without train/ is not pre-training data
