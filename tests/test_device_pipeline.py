"""The device-resident data path: torchvision-exact crops, batched resampling, seeding, resume, channels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import ks_2samp
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from conftest import tiny_config
from dmjd.data import DeviceBatches, load_image_array, random_resized_crop_params, resized_crop
from dmjd.data.pipeline import choose_pipeline
from dmjd.data.resample import pad_batch
from dmjd.engine import Pretrainer


def _torchvision_boxes(n: int, height: int, width: int, scale, ratio, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    img = torch.zeros(1, height, width)
    return torch.tensor([v2.RandomResizedCrop.get_params(img, list(scale), list(ratio)) for _ in range(n)])


@pytest.mark.parametrize(("height", "width", "scale"), [(28, 28, (0.2, 1.0)), (40, 90, (0.08, 1.0))])
def test_crop_parameters_follow_torchvision_distribution(height, width, scale):
    ratio = (3 / 4, 4 / 3)
    ours = random_resized_crop_params(4000, height, width, scale, ratio, generator=torch.Generator().manual_seed(0))
    ref = _torchvision_boxes(4000, height, width, scale, ratio, seed=1)
    for boxes in (ours, ref):  # every box lies inside the image
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= height).all()
        assert (boxes[:, 1] + boxes[:, 3] <= width).all() and (boxes[:, 2:] > 0).all()
    stats = {
        "area": lambda b: (b[:, 2] * b[:, 3]).double() / (height * width),
        "log_ratio": lambda b: (b[:, 3].double() / b[:, 2]).log(),
        "top": lambda b: b[:, 0].double() / (height - b[:, 2] + 1),
        "left": lambda b: b[:, 1].double() / (width - b[:, 3] + 1),
    }
    for name, stat in stats.items():
        p = ks_2samp(stat(ours).numpy(), stat(ref).numpy()).pvalue
        assert p > 1e-3, f"{name}: two-sample KS p={p:.2g}"


def test_crop_parameters_fall_back_to_torchvisions_centre_crop():
    # A 4 x 200 strip: no 3/4..4/3 box of >= 0.9 of the area fits; torchvision centres a ratio-clipped crop.
    ours = random_resized_crop_params(50, 4, 200, (0.9, 1.0), generator=torch.Generator().manual_seed(0))
    ref = _torchvision_boxes(50, 4, 200, (0.9, 1.0), (3 / 4, 4 / 3), seed=0)
    assert (ours == ref[0]).all() and (ref == ref[0]).all()
    assert ours[0].tolist() == [0, 97, 4, 5]


def test_crop_parameters_per_sample_sizes_match_torchvision_for_each_size():
    # Images of different sizes in one batch (decoded JPEGs): each sample's box follows torchvision's
    # distribution for its own size, including the centre-crop fallback of a strip.
    sizes = torch.tensor([[28, 28], [40, 90], [4, 200]]).repeat(2000, 1)
    gen = torch.Generator().manual_seed(0)
    ours = random_resized_crop_params(len(sizes), sizes[:, 0], sizes[:, 1], (0.2, 1.0), generator=gen)
    assert (ours[:, 0] + ours[:, 2] <= sizes[:, 0]).all() and (ours[:, 1] + ours[:, 3] <= sizes[:, 1]).all()
    for i, (height, width) in enumerate(sizes[:3].tolist()):
        mine = ours[i::3]
        ref = _torchvision_boxes(len(mine), height, width, (0.2, 1.0), (3 / 4, 4 / 3), seed=i)
        for stat in (lambda b: (b[:, 2] * b[:, 3]).double(), lambda b: (b[:, 3].double() / b[:, 2]).log()):
            assert ks_2samp(stat(mine).numpy(), stat(ref).numpy()).pvalue > 1e-3, (height, width)
    strip = random_resized_crop_params(2, torch.tensor([4, 28]), torch.tensor([200, 28]), (0.9, 1.0),
                                       generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert strip[0].tolist() == _torchvision_boxes(1, 4, 200, (0.9, 1.0), (3 / 4, 4 / 3), seed=0)[0].tolist()


@pytest.mark.parametrize("channels", [1, 3])
def test_padded_batch_of_mixed_sizes_crops_as_each_image_alone(channels):
    gen = torch.Generator().manual_seed(0)
    images = [
        torch.randint(0, 256, (channels, h, w), dtype=torch.uint8, generator=gen) for h, w in [(20, 31), (45, 17), (8, 8)]
    ]
    padded, sizes = pad_batch(images)
    assert padded.shape == (3, channels, 45, 31) and sizes.tolist() == [[20, 31], [45, 17], [8, 8]]
    boxes = random_resized_crop_params(3, sizes[:, 0], sizes[:, 1], (0.2, 1.0), generator=gen)
    flips = torch.tensor([True, False, True])
    batch = resized_crop(padded, boxes, 12, "bicubic", flips)
    alone = [resized_crop(im[None], boxes[i : i + 1], 12, "bicubic", flips[i : i + 1]) for i, im in enumerate(images)]
    torch.testing.assert_close(batch, torch.cat(alone))


def test_crop_area_stays_in_the_scale_range():
    fits = random_resized_crop_params(1000, 64, 64, (0.1, 0.2), generator=torch.Generator().manual_seed(0))
    area = (fits[:, 2] * fits[:, 3]).double() / 64**2
    assert area.min() > 0.08 and area.max() < 0.23  # rounding widens [0.1, 0.2] slightly


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [16, 64])
def test_resized_crop_equals_torchvision_for_the_same_boxes(interpolation, channels, size):
    gen = torch.Generator().manual_seed(0)
    # smooth images (natural-image-like): a low-resolution noise field upsampled
    low = torch.rand(5, channels, 8, 10, generator=gen)
    images = (torch.nn.functional.interpolate(low, size=(40, 50), mode="bilinear") * 255).round().to(torch.uint8)
    boxes = torch.tensor([[0, 0, 40, 50], [3, 4, 20, 30], [10, 5, 7, 9], [1, 2, 38, 11], [5, 5, 33, 44]])
    flip = torch.tensor([False, True, False, True, True])
    ours = resized_crop(images, boxes, size, interpolation, flip)
    mode = v2.InterpolationMode(interpolation)
    ref = []
    for img, box, f in zip(images, boxes, flip):
        out = F.resized_crop(img.float() / 255, *box.tolist(), [size, size], interpolation=mode, antialias=True)
        ref.append(F.horizontal_flip(out) if f else out)
    torch.testing.assert_close(ours, torch.stack(ref).clamp(0, 1), atol=2e-6, rtol=0)
    # torchvision's uint8 path rounds between passes: equal within a few grey levels on smooth images
    ref8 = [
        F.resized_crop(img, *box.tolist(), [size, size], interpolation=mode, antialias=True) for img, box in zip(images, boxes)
    ]
    ref8 = torch.stack([F.horizontal_flip(r) if f else r for r, f in zip(ref8, flip)]).float() / 255
    assert (ours - ref8).abs().max() <= 4 / 255


def _loader_crops(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """The loader path's crops (torchvision's uint8 path, as ``pretrain_transform`` runs it) in [0, 1]."""
    crops = [
        F.resized_crop(img, *box.tolist(), [size, size], interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
        for img, box in zip(images, boxes)
    ]
    return F.to_dtype(torch.stack(crops), torch.float32, scale=True)


def test_quantised_device_crops_give_the_loader_paths_hog_target():
    """``quantize=True`` (``data.quantize_crops``, the default): the device path resamples in 8-bit levels as
    the loader path does (horizontal pass, round, vertical pass, round), so for the same boxes the crops agree
    but for under 1 % of the pixels, one level apart (torchvision's fixed-point weights round near-ties the
    other way), and the HOG target equals the loader path's on every patch those pixels do not reach. The
    float crops (``quantize=False``) miss on most patches."""
    from dmjd.targets import HOGTarget

    gen = torch.Generator().manual_seed(0)
    low = torch.rand(6, 3, 12, 15, generator=gen)  # a photo-like crop: smooth with edges
    images = (torch.nn.functional.interpolate(low, size=(48, 60), mode="bicubic").clamp(0, 1) * 255).round().to(torch.uint8)
    boxes = torch.tensor([[5, 1, 20, 32], [3, 4, 32, 45], [3, 4, 40, 45], [0, 0, 48, 36], [10, 20, 24, 40], [7, 9, 30, 28]])
    hog = HOGTarget(16, 3, variant="dmjd")
    loader = _loader_crops(images, boxes, 32)
    ours = resized_crop(images, boxes, 32, "bicubic", quantize=True)
    floats = resized_crop(images, boxes, 32, "bicubic")
    torch.testing.assert_close(ours * 255, (ours * 255).round(), atol=1e-4, rtol=0)  # 8-bit levels
    levels_apart = ((ours - loader).abs() * 255).round()
    assert levels_apart.max() <= 1 and (levels_apart > 0).float().mean() < 0.01
    # a patch's HOG reads its pixels and a 1-pixel border (the [-1, 0, 1] differences)
    reached = torch.nn.functional.max_pool2d((levels_apart > 0).any(1, keepdim=True).float(), 3, 1, 1)
    clean = torch.nn.functional.max_pool2d(reached, 16).flatten(1) == 0  # [n, tokens]
    assert clean.sum() >= 6  # 7 of the 24 patches
    torch.testing.assert_close(hog(ours)[clean], hog(loader)[clean], atol=1e-5, rtol=0)
    float_error = (hog(floats) - hog(loader)).abs().amax(-1)[clean]
    assert (float_error > 1e-3).float().mean() > 0.5


def test_device_batches_quantise_by_default_and_the_key_switches_it_off():
    images = torch.randint(0, 256, (16, 3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    default, _ = next(_batches(images, 0).epoch(0))
    floats, _ = next(_batches(images, 0, quantize=False).epoch(0))
    torch.testing.assert_close(default * 255, (default * 255).round(), atol=1e-4, rtol=0)
    assert ((floats * 255 - (floats * 255).round()).abs() > 1e-3).any()
    assert tiny_config().data.quantize_crops and not tiny_config("data.quantize_crops=false").data.quantize_crops


def _batches(images: torch.Tensor, seed: int, **kw) -> DeviceBatches:
    return DeviceBatches(images, 16, 8, seed=seed, **kw)


def test_same_seed_same_batches_other_seed_other_batches():
    images = torch.randint(0, 256, (64, 1, 20, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    a = [x for x, _ in _batches(images, 0).epoch(1)]
    b = [x for x, _ in _batches(images, 0).epoch(1)]
    c = [x for x, _ in _batches(images, 1).epoch(1)]
    assert len(a) == 8 and all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    # resuming at step 5 of the epoch gives the same batches as steps 5.. of the full epoch
    d = [x for x, _ in _batches(images, 0).epoch(1, start_step=5)]
    assert all(torch.equal(x, y) for x, y in zip(a[5:], d))


def test_processes_split_the_global_batch_as_one_process_sees_it():
    images = torch.randint(0, 256, (64, 3, 20, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    one = [x for x, _ in DeviceBatches(images, 16, 8, seed=3).epoch(0)]
    parts = [[x for x, _ in DeviceBatches(images, 16, 4, seed=3, rank=r, world_size=2).epoch(0)] for r in (0, 1)]
    for step, full in enumerate(one):
        torch.testing.assert_close(torch.cat([parts[0][step], parts[1][step]]), full)


def test_one_channel_data_feeds_a_three_channel_model():
    images = torch.randint(0, 256, (16, 1, 20, 20), dtype=torch.uint8)
    x, bad = next(DeviceBatches(images, 16, 8, in_chans=3).epoch(0))
    assert x.shape == (8, 3, 16, 16) and bad == 0
    assert torch.equal(x[:, 0], x[:, 2]) and x.min() >= 0 and x.max() <= 1


def _write_folder(root, n: int, mode: str = "RGB") -> None:
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = (30 + i, 40) if mode == "L" else (30 + i, 40, 3)
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(root / c / f"{i}.png")


@pytest.mark.parametrize("in_chans", [1, 3])
def test_image_folder_is_decoded_once_and_rebuilt_when_it_changes(tmp_path, monkeypatch, in_chans):
    monkeypatch.setenv("DMJD_CACHE", str(tmp_path / "cache"))
    _write_folder(tmp_path / "data", 3)
    (tmp_path / "data" / "a" / "broken.png").write_bytes(b"not an image")
    arr = load_image_array("imagefolder", "all", str(tmp_path / "data"), 24, in_chans)  # all: no held-out split
    assert arr.images.shape == (6, in_chans, 24, 24) and arr.images.dtype == np.uint8
    assert arr.labels.tolist() == [0, 0, 0, 1, 1, 1] and arr.unreadable == 1
    caches = list((tmp_path / "cache" / "decoded").glob("*.npz"))
    assert len(caches) == 1
    again = load_image_array("imagefolder", "all", str(tmp_path / "data"), 24, in_chans)
    assert np.array_equal(again.images, arr.images)
    assert len(list((tmp_path / "cache" / "decoded").glob("*.npz"))) == 1  # reused, not rebuilt
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(tmp_path / "data" / "b" / "new.png")
    grown = load_image_array("imagefolder", "all", str(tmp_path / "data"), 24, in_chans)
    assert len(grown.images) == 7 and len(list((tmp_path / "cache" / "decoded").glob("*.npz"))) == 2


def test_two_processes_decoding_the_same_folder_at_once_both_succeed(tmp_path, monkeypatch):
    """torchrun's ranks decode a new folder together; one rank's cache rename used to take the other's
    temp file away (FileNotFoundError: the torchrun stop-signal test failed on it in 2 of 4 runs). Here the second process's
    whole write runs between the first's write and its rename, the interleaving that failed."""
    import dmjd.data.arrays as arrays

    monkeypatch.setenv("DMJD_CACHE", str(tmp_path / "cache"))
    _write_folder(tmp_path / "data", 3)
    savez, nested, calls = np.savez, [], []

    def savez_with_another_writer(file, **arrays_):
        savez(file, **arrays_)
        calls.append(file)
        if len(calls) == 1:  # the first writer has written, not renamed: the other writes and renames
            nested.append(load_image_array("imagefolder", "all", str(tmp_path / "data"), 24, 1))

    monkeypatch.setattr(arrays.np, "savez", savez_with_another_writer)
    first = load_image_array("imagefolder", "all", str(tmp_path / "data"), 24, 1)
    assert np.array_equal(first.images, nested[0].images)
    assert [p.name.endswith(".npz") for p in (tmp_path / "cache" / "decoded").iterdir()] == [True]  # no temp left


def test_auto_takes_the_device_path_only_when_the_set_fits():
    assert choose_pipeline("auto", 10, 100)[0] == "device"
    assert choose_pipeline("auto", 1000, 100)[0] == "loader"
    assert choose_pipeline("loader", 10, 100)[0] == "loader"


def test_pretrain_demo_on_the_device_pipeline(tmp_path, capsys):
    cfg = tiny_config("data.pipeline=device", "model.in_chans=3")
    summary = Pretrainer(cfg, tmp_path).fit()
    assert summary["steps"] > 0 and math.isfinite(summary["final_loss"])
    out = capsys.readouterr().out
    assert "device pipeline" in out and "uint8 [512x1x28x28]" in out


def test_auto_pipeline_falls_back_to_the_loader_over_budget(tmp_path, capsys):
    cfg = tiny_config("data.device_memory_gb=0.0001", "optim.epochs=1")  # 100 KiB < 512 x 784 B
    Pretrainer(cfg, tmp_path).fit()
    assert "loader pipeline, auto" in capsys.readouterr().out
