"""Shared fixtures: tiny configurations that pre-train in seconds on the embedded sample."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image
from threadpoolctl import threadpool_limits

# The suite runs in parallel workers (pytest -n 2 on 2 cores): one thread each, inherited by the
# subprocesses tests start, avoids oversubscription (it made small runs 6x slower here).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from dmjd.config import Config, load_config  # noqa: E402  (after the thread setting above)
from dmjd.eval.loading import InputSpec  # noqa: E402

# A 2-block ViT of width 32 and its branches (sizes only: what a budgeted or recipe run keeps).
TINY_VIT = [
    "model.embed_dim=32",
    "model.depth=2",
    "model.num_heads=2",
    "model.decoder_dim=32",
    "model.decoder_depth=1",
    "model.decoder_heads=2",
    "model.vdb_hidden=32",
]
TINY = [
    *TINY_VIT,
    "model.patch_size=8",
    "masking.block_size=1",
    "data.limit=512",
    "optim.batch_size=64",
    "optim.epochs=2",
    "optim.warmup_epochs=0.5",
    "optim.blr=1e-3",
    "train.progress=false",
    "train.tensorboard=false",
    "train.log_interval=2",
]


def tiny_config(*overrides: str) -> Config:
    """The demo preset shrunk to a 4x4-token ViT with 2 blocks; extra overrides win."""
    return load_config("demo", [*TINY, *overrides])


@pytest.fixture
def tiny_cfg() -> Config:
    return tiny_config()


@pytest.fixture(scope="module")
def one_thread():
    """One thread for torch and OpenMP/BLAS in a module (``pytest.mark.usefixtures("one_thread")``):
    spin-waiting threads crawl when tests run in parallel."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


# Fine-tuning tests: 32 px one-channel inputs, and the MAE recipe with its regularisers off.
FINETUNE_SPEC = InputSpec(img_size=32, in_chans=1, mean=(0.5,), std=(0.5,))
PLAIN_FINETUNE = dict(mixup=0.0, cutmix=0.0, smoothing=0.0, rand_augment="none", reprob=0.0, drop_path=0.0)


def write_images(folder: Path, n: int, classes: tuple[str, ...] = (), size: int = 24, seed: int = 0) -> Path:
    """``n`` random RGB PNGs per class folder (or flat when ``classes`` is empty)."""
    rng = np.random.default_rng(seed)
    for c, sub in enumerate(classes or ("",)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 120, (size, size, 3), dtype=np.uint8) + 100 * c
            Image.fromarray(pixels.astype(np.uint8)).save(folder / sub / f"{i:03d}.png")
    return folder


def load_tool(name: str) -> ModuleType:
    """The script ``tools/NAME.py`` as a module (tools/ is no package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
