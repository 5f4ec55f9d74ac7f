"""The issue-11 benchmark harness: quick fine-tuning, confidence intervals, the official-MAE step
(run against a stand-in checkout the test writes), throughput modes and the recorded commit."""

from __future__ import annotations

import json
import math
import textwrap
import warnings

import pytest
import torch

from conftest import tiny_config
from dmjd.bench.analysis import aggregate, aggregate_ratios
from dmjd.bench.environment import git_commit
from dmjd.bench.throughput import measure, throughput_config
from dmjd.engine import Pretrainer
from dmjd.eval.quick_finetune import quick_finetune_top1


def test_ci95_is_students_t_interval_of_the_mean():
    stats = aggregate([1.0, 2.0, 3.0, None])
    # t(0.975, 2) = 4.3027; std 1; n 3
    assert stats.ci95 == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert aggregate([1.0]).ci95 is None and aggregate([]).ci95 is None
    assert (stats.ci_low, stats.ci_high) == pytest.approx((2.0 - stats.ci95, 2.0 + stats.ci95))


def test_speedups_aggregate_in_log_space():
    """2x and 0.5x average to 1x; the interval is the t interval of the mean log-ratio, so it stays
    positive with two seeds where the plain mean's interval would reach below zero."""
    stats = aggregate_ratios([2.0, 0.5, None])
    assert stats.mean == pytest.approx(1.0)
    assert (stats.n, stats.total) == (2, 3)
    half = 12.706205 * math.log(2.0) * math.sqrt(2) / math.sqrt(2)  # t(0.975, 1) x std(log r) / sqrt(2)
    assert (stats.ci_low, stats.ci_high) == pytest.approx((math.exp(-half), math.exp(half)), rel=1e-5)
    assert stats.ci_low > 0 and aggregate([1.1, 1.6]).ci_low < 0
    assert aggregate_ratios([1.5]).ci_low is None and aggregate_ratios([None]).mean is None


def _separable_split(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes: a bright top half or a bright bottom half (flip-invariant), with noise (uint8, 1 x 16 x 16)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    images = torch.randint(0, 60, (n, 1, 16, 16), generator=g)
    top = labels == 0
    images[top, :, :8] += 180
    images[~top, :, 8:] += 180
    return images.to(torch.uint8), labels


def test_quick_finetune_learns_a_separable_task_and_leaves_the_encoder_alone(tmp_path):
    cfg = tiny_config("model.img_size=16", "model.patch_size=4", "target.cell_size=2")
    encoder = Pretrainer(cfg, tmp_path).model.encoder
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    from dmjd.data import Normalize

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        acc = quick_finetune_top1(
            encoder, _separable_split(256, 0), _separable_split(128, 1), Normalize((0.5,), (0.5,)),
            epochs=6, batch_size=64, blr=2e-3, crop_scale=(0.9, 1.0), pool="avg",
        )  # fmt: skip
    assert acc >= 0.9
    assert not [w for w in caught if "learned nothing" in str(w.message)]
    after = encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_quick_finetune_warns_when_it_learns_nothing(tmp_path):
    """With no training (blr 0) its answers are no better than the test split's majority class (90 %)."""
    from dmjd.data import Normalize

    encoder = Pretrainer(tiny_config("model.img_size=16", "model.patch_size=4", "target.cell_size=2"), tmp_path).model.encoder
    images, labels = _separable_split(128, 1)
    labels[: int(0.9 * len(labels))] = 0
    with pytest.warns(RuntimeWarning, match="learned nothing"):
        acc = quick_finetune_top1(encoder, _separable_split(64, 0), (images, labels), Normalize((0.5,), (0.5,)),
                                  epochs=1, blr=0.0, pool="avg")  # fmt: skip
    assert acc <= 0.9


STAND_IN_MODELS_MAE = '''
import numpy as np
import torch
from torch import nn
from torch._six import inf  # removed from PyTorch: the harness must provide it
from timm.models.vision_transformer import Block

assert np.float is float  # removed from NumPy: the harness must provide it


class MaskedAutoencoderViT(nn.Module):
    """A stand-in with the official constructor and forward signature (not MAE's code)."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=1024, depth=24, num_heads=16,
                 decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, mlp_ratio=4.0,
                 norm_layer=nn.LayerNorm, norm_pix_loss=False):
        super().__init__()
        self.embed = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)
        self.block = Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, qk_scale=None, norm_layer=norm_layer)
        self.head = nn.Linear(embed_dim, patch_size**2 * in_chans)

    def forward(self, imgs, mask_ratio=0.75):
        x = self.embed(imgs).flatten(2).transpose(1, 2)
        pred = self.head(self.block(x))
        return pred.pow(2).mean(), pred, None
'''

STAND_IN_MISC = """
import torch


class NativeScalerWithGradNormCount:
    def __init__(self):
        self._scaler = torch.amp.GradScaler("cuda", enabled=torch.cuda.is_available())

    def __call__(self, loss, optimizer, parameters=None, update_grad=True):
        self._scaler.scale(loss).backward()
        if update_grad:
            self._scaler.step(optimizer)
            self._scaler.update()
"""


def test_official_step_runs_against_a_checkout_with_the_official_layout(tmp_path):
    from dmjd.bench.official_mae import time_official

    (tmp_path / "util").mkdir()
    (tmp_path / "models_mae.py").write_text(textwrap.dedent(STAND_IN_MODELS_MAE))
    (tmp_path / "util" / "__init__.py").write_text("")
    (tmp_path / "util" / "misc.py").write_text(textwrap.dedent(STAND_IN_MISC))
    result = time_official(tmp_path, "vit-ti4-32", batch=4, steps=2, warmup=1, device="cpu")
    assert result["step_ms"] > 0 and result["images_per_s"] > 0 and math.isfinite(result["last_loss"])


def test_official_step_names_a_folder_that_is_not_a_checkout(tmp_path):
    from dmjd.bench.official_mae import import_official_mae

    with pytest.raises(FileNotFoundError, match=r"models_mae.py"):
        import_official_mae(tmp_path)


def test_throughput_through_the_device_path_reports_compile_time_only_when_compiled():
    cfg = throughput_config("cpu-small", "MAE", 8, "cpu")
    r = measure(cfg, steps=2, warmup=1, count_flops=False, data="device")
    assert r["compile_s"] is None and r["images_per_s"] > 0 and r["flops_per_step"] is None
    assert throughput_config("cpu-small", "MAE", 8, "cpu", "reduce-overhead").train.compile_mode == "reduce-overhead"
    with pytest.raises(ValueError, match="synthetic"):
        measure(cfg, steps=1, warmup=0, count_flops=False, data="disk")


def test_recorded_commit_prefers_the_environment(monkeypatch):
    monkeypatch.setenv("DMJD_GIT_COMMIT", "abc123")
    assert git_commit() == "abc123"


def test_loader_benchmark_runs_every_path_on_the_same_jpegs(tmp_path):
    pytest.importorskip("webdataset")
    from dmjd.bench.loader import format_table, make_jpegs, run_loader_benchmark

    src = make_jpegs(tmp_path / "jpegs", 12, size=(40, 30), classes=2)
    r = run_loader_benchmark(src, 0, [0], ["imagefolder", "shards", "shards-device"], batch=4, batches=2, warmup=1,
                             img_size=32, device="cpu", feed_rate=100.0, shard_size=5, rounds=1)  # fmt: skip
    assert r["images"] == 12 and r["shards"] == 3 and list(r["runs"]) == [
        "imagefolder [0 workers]", "shards [0 workers]", "shards-device [0 workers]"]  # fmt: skip
    for run in r["runs"].values():
        assert run["images"] == 8 and run["cores_to_feed"] >= 1
    assert "images/s per core" in format_table(r)


def test_screen_evaluates_every_epoch_and_is_reproducible(capsys):
    """benchmarks/screen.py: the smoke testbed's MAE, 2 epochs, probes before training and after each."""
    from dmjd.bench.screen import main, screen

    first = screen("smoke", "MAE", 2, ["data.limit=64"])
    assert [p["epoch"] for p in first["points"]] == [0, 1, 2]
    assert all(0.0 <= p["knn_top1"] <= 1.0 and 0.0 <= p["linprobe_top1"] <= 1.0 for p in first["points"])
    assert first["summary"]["epochs"] == 2
    assert main(["--testbed", "smoke", "--variant", "MAE", "--epochs", "2", "data.limit=64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = [line for line in lines if line.startswith("screen:")]
    assert len(table) == 3 and table[0].startswith("screen: epoch 0 (ETE 0.00")
    again = json.loads(lines[-1])
    assert [p["knn_top1"] for p in again["points"]] == [p["knn_top1"] for p in first["points"]]


def test_thread_limit_sets_torchs_pool_through_openmp_not_set_num_threads(monkeypatch):
    """``thread_limit`` sizes torch's intra-op pool via OpenMP (threadpoolctl) and restores it; it
    never calls ``torch.set_num_threads``, which would also switch MKL's dynamic threading off."""
    from dmjd.bench.environment import thread_limit

    def forbidden(n: int) -> None:
        raise AssertionError("thread_limit called torch.set_num_threads")

    before = torch.get_num_threads()
    monkeypatch.setattr(torch, "set_num_threads", forbidden)
    with thread_limit(before + 2):
        assert torch.get_num_threads() == before + 2
    assert torch.get_num_threads() == before
    with thread_limit(None):
        assert torch.get_num_threads() == before
