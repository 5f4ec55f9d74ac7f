"""The folder of natural photos (dmjd.data.photos, tools/make_photo_folder.py)."""

import numpy as np
import pytest
from PIL import Image

from conftest import load_tool
from dmjd.data import ImageFiles, eval_transform, photos, profile_data
from dmjd.data.photos import packaged_photos, photo_crops, write_photo_folder
from dmjd.errors import InputError


def _photo(height=90, width=120):
    """A synthetic photo whose red channel rises left to right and green top to bottom."""
    red = np.broadcast_to(np.linspace(0, 255, width), (height, width))
    green = np.broadcast_to(np.linspace(0, 255, height)[:, None], (height, width))
    return Image.fromarray(np.stack([red, green, np.full_like(red, 128)], axis=-1).astype(np.uint8))


def test_photo_crops_shape_scale_flips_and_seed():
    crops = photo_crops(_photo(), 64, 16, np.random.default_rng(0))
    assert crops.shape == (64, 16, 16, 3) and crops.dtype == np.uint8
    assert np.abs(crops[..., 2].astype(int) - 128).max() <= 1  # a constant channel stays constant
    red_rise = crops[:, 8, -1, 0].astype(int) - crops[:, 8, 0, 0]
    assert (red_rise > 0).any() and (red_rise < 0).any()  # some crops are mirrored, some not
    # a side of 25-60 % of the shorter side (90 px): the red ramp spans 22-54 px of 120 -> 47-115 levels
    assert np.abs(red_rise).min() >= 35 and np.abs(red_rise).max() <= 125
    assert (crops[:, -1, :, 1] > crops[:, 0, :, 1]).all()  # green still rises downwards: flips are horizontal
    assert np.array_equal(crops, photo_crops(_photo(), 64, 16, np.random.default_rng(0)))
    assert not np.array_equal(crops, photo_crops(_photo(), 64, 16, np.random.default_rng(1)))
    assert photo_crops(Image.new("L", (40, 30), 77), 2, 8, np.random.default_rng(0)).shape == (2, 8, 8, 3)


def test_write_photo_folder_class_layout(tmp_path):
    counts = write_photo_folder(tmp_path / "out", {"a": _photo(), "b": _photo(60, 60)}, size=16, crops_per_photo=5)
    assert counts == {"all": {"a": 5, "b": 5}}
    ds = ImageFiles(tmp_path / "out", eval_transform(16, 3))
    assert ds.classes == ("a", "b") and len(ds) == 10 and ds[0][0].shape == (3, 16, 16)
    with Image.open(tmp_path / "out" / "a" / "00000.png") as img:
        assert (img.size, img.mode) == ((16, 16), "RGB")
    again = write_photo_folder(tmp_path / "again", {"b": _photo(60, 60)}, size=16, crops_per_photo=5)
    assert again == {"all": {"b": 5}}
    same = [(tmp_path / d / "b" / f"{i:05d}.png").read_bytes() for d in ("out", "again") for i in range(5)]
    assert same[:5] == same[5:], "a class's crops do not depend on the other photos"


def test_write_photo_folder_train_val_layout(tmp_path):
    counts = write_photo_folder(tmp_path, {"a": _photo(), "b": _photo()}, size=8, crops_per_photo=10, val_fraction=0.3)
    assert counts == {"train": {"a": 7, "b": 7}, "val": {"a": 3, "b": 3}}
    names = {split: sorted(p.name for p in (tmp_path / split / "a").iterdir()) for split in ("train", "val")}
    assert not set(names["train"]) & set(names["val"]) and len(names["train"] + names["val"]) == 10
    p = profile_data(None, tmp_path)
    assert (p.layout, p.num_images, p.num_classes, p.has_val, p.channels) == ("train_val", 14, 2, True, 3)


def test_write_photo_folder_rejects_bad_input(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x.txt").write_text("x")
    with pytest.raises(InputError, match="not an empty folder"):
        write_photo_folder(tmp_path / "taken", {"a": _photo()})
    with pytest.raises(InputError, match="no photos"):
        write_photo_folder(tmp_path / "new", {})
    with pytest.raises(InputError, match="test_fraction"):
        write_photo_folder(tmp_path / "new", {"a": _photo()}, val_fraction=1.5)
    with pytest.raises(InputError, match="count"):
        write_photo_folder(tmp_path / "new", {"a": _photo()}, crops_per_photo=0)
    assert not (tmp_path / "new").exists()


def _tool():
    return load_tool("make_photo_folder")


def test_tool_on_the_packaged_photos(tmp_path, capsys):
    found, missing = packaged_photos()
    if not found:
        pytest.skip("no packaged photos installed")
    assert {"china", "flower"} <= set(found), "scikit-learn is a dependency"
    assert _tool().main([str(tmp_path / "out"), "--size", "16", "--crops-per-photo", "2"]) == 0
    out = capsys.readouterr().out
    assert f"{len(found)} classes, {2 * len(found)} images" in out
    assert ("scikit-image" in out) == ("skimage" in missing)
    assert sorted(d.name for d in (tmp_path / "out").iterdir()) == sorted(found)
    assert _tool().main([str(tmp_path / "out")]) == 2
    assert "make_photo_folder: error:" in capsys.readouterr().err


def test_tool_without_scikit_image_uses_fewer_photos_and_says_so(tmp_path, capsys, monkeypatch):
    real = photos.find_spec
    monkeypatch.setattr(photos, "find_spec", lambda name: None if name == "skimage" else real(name))
    found, missing = packaged_photos()
    assert missing == ["skimage"] and set(found) == {"china", "flower", "grace_hopper"}
    assert _tool().main([str(tmp_path / "out"), "--size", "8", "--crops-per-photo", "1"]) == 0
    out = capsys.readouterr().out
    assert "note: scikit-image (pip install 'dmjd[photos]') is not installed" in out and "3 classes, 3 images" in out
