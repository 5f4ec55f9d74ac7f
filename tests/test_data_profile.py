"""profile_data (what a recipe knows about a training set), folder_layout and the stratified split."""

import numpy as np
import pytest
from PIL import Image

from dmjd.data import (
    DataError,
    build_dataset,
    embedded_sample,
    eval_transform,
    folder_layout,
    load_image_array,
    profile_data,
    stratified_split,
)
from dmjd.errors import InputError
from dmjd.eval.features import dataset_labels, labelled_splits

# (size as (width, height), PIL mode) of the images written into each class folder
IMAGES = [((40, 30), "RGB"), ((20, 20), "L"), ((64, 48), "RGB")]


def _write(folder, images=IMAGES):
    folder.mkdir(parents=True, exist_ok=True)
    for i, (size, mode) in enumerate(images):
        Image.new(mode, size).save(folder / f"{i}.png")


def test_flat_folder(tmp_path):
    _write(tmp_path)
    p = profile_data("imagefolder", tmp_path)
    assert (p.layout, p.num_images, p.labelled, p.num_classes, p.has_val) == ("flat", 3, False, 0, False)
    assert p.typical_size == (30, 40) and (p.min_side, p.max_side) == (20, 64)
    assert p.channels == 3 and p.sampled == 3 and p.path == str(tmp_path)


def test_class_folders_of_grey_images(tmp_path):
    for c in ("cat", "dog"):
        _write(tmp_path / c, [((28, 28), "L"), ((28, 28), "I;16"), ((28, 28), "LA")])
    p = profile_data(None, tmp_path)
    assert (p.layout, p.num_images, p.labelled, p.num_classes, p.channels) == ("classes", 4, True, 2, 1)
    assert p.typical_size == (28, 28) and not p.has_val
    tf = eval_transform(8, 1)  # the recipe sizes the run for the images pre-training reads, not the probes' test ones
    assert (p.num_images, p.held_out) == tuple(
        len(build_dataset("imagefolder", s, tf, str(tmp_path))) for s in ("train", "test")
    )


@pytest.mark.parametrize("given", ["root", "train"])
def test_train_val_tree_from_root_or_train_folder(tmp_path, given):
    for split, n in (("train", 3), ("val", 1)):
        for c in ("a", "b", "c"):
            _write(tmp_path / split / c, IMAGES[:n])
    p = profile_data("imagefolder", tmp_path if given == "root" else tmp_path / "train")
    assert (p.layout, p.num_images, p.num_classes, p.has_val) == ("train_val", 9, 3, True)


def test_header_sample_is_bounded_and_seeded(tmp_path):
    sizes = [((8 + i, 8 + i), "RGB") for i in range(30)]
    _write(tmp_path, sizes)
    a, b = profile_data(None, tmp_path, sample_size=5, seed=1), profile_data(None, tmp_path, sample_size=5, seed=1)
    assert a == b and a.sampled == 5 and a.num_images == 30
    assert {profile_data(None, tmp_path, sample_size=5, seed=s).typical_size for s in range(6)} != {a.typical_size}


def test_named_sets_are_known_facts():
    embedded = profile_data("embedded", None)
    assert embedded.num_images == len(embedded_sample("train", eval_transform(28, 1)))
    assert (embedded.typical_size, embedded.channels, embedded.num_classes, embedded.sampled) == ((28, 28), 1, 10, 0)
    fmnist = profile_data("fashion_mnist", "/nowhere")
    assert (fmnist.num_images, fmnist.typical_size, fmnist.channels, fmnist.has_val) == (60_000, (28, 28), 1, True)
    assert fmnist.path == "/nowhere"
    assert profile_data("cifar100", None).num_classes == 100 and profile_data("stl10", None).typical_size == (96, 96)


def test_a_folder_of_cifar_batches_gets_the_named_facts(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    p = profile_data(None, tmp_path)
    assert (p.name, p.num_images, p.path) == ("cifar10", 50_000, str(tmp_path))


def test_profile_errors_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        profile_data("imagefolder", tmp_path / "missing")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    (tmp_path / "empty" / "cls" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no images"):
        profile_data("imagefolder", tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="readable"):
        profile_data("imagefolder", tmp_path / "bad")
    with pytest.raises(DataError, match="webdataset"):
        profile_data("webdataset", "x-{0..1}.tar")


def test_folder_layout(tmp_path):
    _write(tmp_path / "flat")
    _write(tmp_path / "classes" / "a")
    _write(tmp_path / "tree" / "train" / "a")
    (tmp_path / "tree" / "val").mkdir()
    assert [folder_layout(tmp_path / n) for n in ("flat", "classes", "tree")] == ["flat", "classes", "train_val"]
    assert folder_layout(tmp_path / "tree" / "train") == "train_val"
    assert folder_layout(tmp_path / "classes" / "a") == "flat"


# ------------------------------------------------------------------------------ stratified split
def test_stratified_split_keeps_class_shares_without_overlap():
    labels = np.repeat(np.arange(5), [10, 3, 1, 2, 0 + 7])
    train, test = stratified_split(labels, test_fraction=0.2, seed=0)
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(labels.size))
    assert np.bincount(labels[test], minlength=5).tolist() == [2, 1, 0, 1, 1]  # >= 1 per class of 2+
    assert np.bincount(labels[train], minlength=5).tolist() == [8, 2, 1, 1, 6]


def test_stratified_split_is_seeded():
    labels = np.tile(np.arange(4), 25)
    a, b = stratified_split(labels, 0.3, seed=4), stratified_split(labels, 0.3, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], stratified_split(labels, 0.3, seed=5)[1])


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_stratified_split_rejects_bad_fractions(fraction):
    with pytest.raises(InputError, match="test_fraction"):
        stratified_split(np.zeros(4, dtype=int), fraction)


def test_labelled_splits_of_a_class_folder_without_train_val(tmp_path):
    for c, n in (("a", 10), ("b", 5), ("c", 2)):
        _write(tmp_path / c, [((8, 8), "L")] * n)
    tf = eval_transform(8, 1)
    train, test = labelled_splits("imagefolder", str(tmp_path), tf, tf, seed=1)
    assert np.bincount(dataset_labels(test)).tolist() == [2, 1, 1]
    assert np.bincount(dataset_labels(train)).tolist() == [8, 4, 1]
    assert not {p for p, _ in train.samples} & {p for p, _ in test.samples} and train.root == test.root
    assert (train.held_out, test.held_out) == (4, 13)
    # one split for every seed of the subsets: the split pre-training keeps the training part of
    assert labelled_splits("imagefolder", str(tmp_path), tf, tf, seed=2)[1].samples == test.samples
    assert build_dataset("imagefolder", "test", tf, str(tmp_path)).samples == test.samples
    assert len(build_dataset("imagefolder", "all", tf, str(tmp_path))) == 17
    assert test[0][0].shape == (1, 8, 8)


def test_an_unreadable_file_is_left_out_of_its_split_not_replaced(tmp_path):
    for c in ("a", "b"):
        _write(tmp_path / c, [((8, 8), "L")] * 5)
    (tmp_path / "a" / "0.png").write_bytes(b"not a png")
    tf = eval_transform(8, 1)
    train, test = labelled_splits("imagefolder", str(tmp_path), tf, tf)
    assert len(train) + len(test) == 9 and tmp_path / "a" / "0.png" not in {p for p, _ in train.samples + test.samples}
    assert all(train[i][2] == 0 for i in range(len(train)))  # no stand-in image


def test_an_image_over_pils_pixel_limit_is_skipped_as_unreadable_by_every_reader(tmp_path, monkeypatch):
    """PIL refuses images above Image.MAX_IMAGE_PIXELS with DecompressionBombError, which is no
    OSError: one such PNG in a folder (openclipart-png has a 231-Mpixel one) must be reported and
    left out like a corrupt file, not end the run with a traceback."""
    for c in ("a", "b"):
        _write(tmp_path / c, [((8, 8), "RGB")] * 5)
    Image.new("RGB", (40, 40)).save(tmp_path / "a" / "huge.png")  # 1,600 pixels > 2 x the limit below
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    monkeypatch.setenv("DMJD_CACHE", str(tmp_path / "cache"))
    assert profile_data("imagefolder", tmp_path).sampled == 10  # its header is skipped
    tf = eval_transform(8, 3)
    train, test = labelled_splits("imagefolder", str(tmp_path), tf, tf)
    assert len(train) + len(test) == 10 and tmp_path / "a" / "huge.png" not in {p for p, _ in train.samples + test.samples}
    array = load_image_array("imagefolder", "all", str(tmp_path), 8, 3)
    assert array.images.shape[0] == 10 and array.unreadable == 1
