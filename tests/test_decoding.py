"""Every path decodes an image the same way (``dmjd.data.decode.to_mode``): upright by its EXIF
orientation, and with transparent pixels composited on ``data.background`` (issue 32 item 3, issue 34
item 1). Each test image is read through the folder cache, the loader, the shards and an evaluation."""

from __future__ import annotations

import io
import logging
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from dmjd.config import ConfigError, load_config
from dmjd.data import build_dataset, eval_transform, load_image_array, pretrain_transform, to_mode
from dmjd.data.shard_writer import keep_image, write_shards
from dmjd.data.streaming import shard_batches
from dmjd.eval.features import labelled_splits

SIZE = 32


def cutout() -> Image.Image:
    """40x40 RGBA: a blue disc, fully transparent around it where the pixels still hold pure red."""
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 0] = 255  # red under the transparent pixels
    yy, xx = np.mgrid[:40, :40]
    disc = (yy - 20) ** 2 + (xx - 20) ** 2 < 12**2
    rgba[disc] = (0, 0, 255, 255)
    return Image.fromarray(rgba, "RGBA")


def sideways_jpeg() -> bytes:
    """A 300x100 JPEG stored sideways with EXIF orientation 6 (shown rotated 90 degrees clockwise): its
    stored left half is black, so upright the top is dark and the bottom light."""
    stored = np.full((100, 300, 3), 230, np.uint8)
    stored[:, :150] = 20
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, format="JPEG", exif=exif, quality=95)
    return buffer.getvalue()


def _tree(root, files):
    """ImageFolder train/val with one class folder holding ``files`` ({name: PIL image or bytes})."""
    for split in ("train", "val"):
        folder = root / split / "a"
        folder.mkdir(parents=True)
        for name, content in files.items():
            path = folder / name
            path.write_bytes(content) if isinstance(content, bytes) else content.save(path)
    return root


def _as_uint8(image) -> np.ndarray:
    """``[C, H, W]`` uint8 of a float tensor in [0, 1] or a uint8 array."""
    array = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    return (array * 255).round().astype(np.uint8) if array.dtype != np.uint8 else array


def _every_path(root, tmp_path, monkeypatch, background="white") -> dict[str, np.ndarray]:
    """The first image of ``root``'s train split as the folder cache, the loader, an evaluation and the
    shards each decode it: ``{path: uint8 [C, H, W]}``."""
    monkeypatch.setenv("DMJD_CACHE", str(tmp_path / "cache"))
    folder = str(root)
    torch.manual_seed(0)
    loader = pretrain_transform(SIZE, 3, crop_scale=(0.9, 1.0), hflip=False, background=background)
    evaluate = eval_transform(SIZE, 3, background=background)
    train, _ = labelled_splits("imagefolder", folder, evaluate, evaluate)
    write_shards(build_dataset("imagefolder", "train", keep_image, folder), tmp_path / "shards", 10, background=background)
    shards = build_dataset("webdataset", "train", evaluate, str(tmp_path / "shards" / "train-000000.tar"))
    return {
        "cache": load_image_array("imagefolder", "train", folder, SIZE, 3, background=background).images[0],
        "loader": _as_uint8(build_dataset("imagefolder", "train", loader, folder)[0][0]),
        "evaluation": _as_uint8(train[0][0]),
        "shards": _as_uint8(shards[0][0]),
    }


def _red(image: np.ndarray) -> int:
    r, g, b = (image[c].astype(int) for c in range(3))
    return int(((r > 150) & (g < 100) & (b < 100)).sum())


def test_colour_under_transparent_pixels_reaches_no_path(tmp_path, monkeypatch):
    decoded = _every_path(_tree(tmp_path / "data", {"cut.png": cutout()}), tmp_path, monkeypatch)
    for path, image in decoded.items():
        assert _red(image) == 0, path
        assert image[:, 0, 0].min() > 240, path  # the corner is the white background
        assert image[2, SIZE // 2, SIZE // 2] > 200 and image[0, SIZE // 2, SIZE // 2] < 60, path  # the blue disc


def test_data_background_black_is_used_by_every_path(tmp_path, monkeypatch):
    assert load_config(None, ["data.background=black"]).data.background == "black"
    with pytest.raises(ConfigError, match="background"):
        load_config(None, ["data.background=red"])
    decoded = _every_path(_tree(tmp_path / "data", {"cut.png": cutout()}), tmp_path, monkeypatch, "black")
    for path, image in decoded.items():
        assert _red(image) == 0 and image[:, 0, 0].max() < 15, path


def test_a_transparent_palette_and_gray_alpha_are_composited_too():
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.info["transparency"] = 0  # index 0 (red) is transparent
    gray = Image.fromarray(np.stack([np.full((4, 4), 40, np.uint8), np.zeros((4, 4), np.uint8)], -1), "LA")
    assert np.asarray(to_mode(palette, 3)).min() == 255
    assert np.asarray(to_mode(gray, 1, "gray")).tolist() == [[128] * 4] * 4


def test_an_exif_rotated_jpeg_is_upright_in_every_path(tmp_path, monkeypatch):
    assert to_mode(Image.open(io.BytesIO(sideways_jpeg())), 3).size == (100, 300)  # width x height
    decoded = _every_path(_tree(tmp_path / "data", {"phone.jpg": sideways_jpeg()}), tmp_path, monkeypatch)
    for path, image in decoded.items():
        top, bottom = image[:, : SIZE // 4].mean(), image[:, -SIZE // 4 :].mean()
        left, right = image[:, :, : SIZE // 4].mean(), image[:, :, -SIZE // 4 :].mean()
        assert top < 60 and bottom > 180 and abs(left - right) < 20, (path, top, bottom, left, right)


def test_shards_hold_the_upright_opaque_image(tmp_path):
    root = _tree(tmp_path / "data", {"cut.png": cutout(), "phone.jpg": sideways_jpeg()})
    write_shards(build_dataset("imagefolder", "train", keep_image, str(root)), tmp_path / "shards", 10)
    with tarfile.open(tmp_path / "shards" / "train-000000.tar") as tar:
        images = [Image.open(io.BytesIO(tar.extractfile(m).read())) for m in tar.getmembers() if m.name.endswith(".jpg")]
    sizes = sorted(image.size for image in images)
    assert sizes == [(40, 40), (100, 300)] and all(image.mode == "RGB" for image in images)
    assert all(image.getexif().get(0x0112, 1) == 1 for image in images)
    assert _red(np.asarray(next(i for i in images if i.size == (40, 40))).transpose(2, 0, 1)) == 0


def test_a_corrupt_alpha_png_is_one_line_and_a_1x1_transparent_image_decodes(tmp_path, monkeypatch, caplog):
    buffer = io.BytesIO()
    cutout().save(buffer, format="PNG")
    data = buffer.getvalue()
    corrupt = data[: len(data) * 2 // 3]  # the RGBA stream cut in the middle of its rows
    tiny = Image.new("RGBA", (1, 1), (255, 0, 0, 0))
    root = _tree(tmp_path / "data", {"a_good.png": cutout(), "b_corrupt.png": corrupt, "c_tiny.png": tiny})
    monkeypatch.setenv("DMJD_CACHE", str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING):
        array = load_image_array("imagefolder", "train", str(root), SIZE, 3)
    assert array.images.shape == (2, 3, SIZE, SIZE) and array.unreadable == 1  # nothing else lost
    warned = [r.getMessage() for r in caplog.records if "b_corrupt.png" in r.getMessage()]
    assert len(warned) == 1 and "\n" not in warned[0]
    assert array.images[1].min() == 255  # the 1x1 transparent image: white
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        loader = build_dataset("imagefolder", "train", eval_transform(SIZE, 3), str(root))
        items = [loader[i] for i in range(3)]
    assert [int(skipped) for _, _, skipped in items] == [0, 1, 0]
    assert len([r for r in caplog.records if "b_corrupt.png" in r.getMessage()]) == 1
    assert _as_uint8(items[2][0]).min() == 255


@pytest.mark.parametrize("on_device", [False, True])
def test_streamed_shards_of_transparent_pngs_use_the_background(tmp_path, on_device):
    """Shards made elsewhere may hold RGBA PNGs: the streaming loader (PIL in the workers, or the
    device path's PIL fallback for what is not a JPEG) composites them on ``background`` too."""
    buffer = io.BytesIO()
    cutout().save(buffer, format="PNG")
    with tarfile.open(tmp_path / "train-000000.tar", "w") as tar:
        for i in range(4):
            for ext, data in (("png", buffer.getvalue()), ("cls", b"0")):
                info = tarfile.TarInfo(f"{i:04d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    batches, _ = shard_batches(str(tmp_path / "train-000000.tar"), 4, 0, 0, 1, 0, torch.device("cpu"), img_size=SIZE,
                               in_chans=3, crop_scale=(0.9, 1.0), hflip=False, decode_on_device=on_device,
                               background="black")  # fmt: skip
    images, bad = next(iter(batches.epoch(0)))
    assert bad == 0 and images.shape == (4, 3, SIZE, SIZE)
    for image in images:
        pixels = _as_uint8(image)
        assert _red(pixels) == 0 and pixels[:, 0, 0].max() < 15  # black corner, no red
