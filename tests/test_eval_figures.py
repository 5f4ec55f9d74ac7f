"""t-SNE and convergence-curve figures: the right points, and PNGs that are written and not blank."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dmjd.eval.knn import knn_top1
from dmjd.eval.plot import run_summary, save_curves_figure
from dmjd.eval.tsne import save_tsne_figure, select_classes, tsne_embedding


pytestmark = pytest.mark.usefixtures("one_thread")


def assert_drawn_png(path, min_size=(300, 200)):
    """A readable PNG of at least ``min_size`` pixels that is not a single flat colour."""
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] >= min_size[0] and img.size[1] >= min_size[1]
        pixels = np.asarray(img.convert("L"), dtype=np.float32)
    assert pixels.std() > 1.0


def test_select_classes_keeps_the_first_classes_and_caps_each():
    labels = np.repeat(np.arange(25), 7)[::-1].copy()
    idx = select_classes(labels, num_classes=20, per_class=5, seed=1)
    picked = labels[idx]
    assert sorted(set(picked.tolist())) == list(range(20))
    assert np.all(np.bincount(picked) == 5) and np.all(np.diff(idx) > 0)
    assert np.array_equal(idx, select_classes(labels, 20, 5, seed=1))
    assert len(select_classes(labels, 3, per_class=100)) == 21
    with pytest.raises(ValueError, match="1..20"):
        select_classes(labels, num_classes=21)


def test_tsne_keeps_separable_classes_apart(tmp_path):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(100) % 4
    feats = torch.randn(4, 48, generator=g)[labels] * 4 + torch.randn(100, 48, generator=g)
    emb = torch.from_numpy(tsne_embedding(feats, seed=0)).float()
    assert emb.shape == (100, 2)
    # neighbours in the 2-D map still share their class
    a, b = torch.randperm(100, generator=g).split(50)
    assert knn_top1(emb[a], labels[a], emb[b], labels[b], k=5, temperature=1.0) > 0.95
    path = save_tsne_figure(emb.numpy(), labels.numpy(), tmp_path / "sub" / "tsne.png", ["a", "b", "c", "d"])
    assert_drawn_png(path)


def test_tsne_of_very_few_points():
    assert tsne_embedding(np.random.default_rng(0).normal(size=(8, 5))).shape == (8, 2)


def _write_run(folder, with_eval=True, loss_vis=True):
    folder.mkdir()
    lines = []
    for step in range(1, 21):
        rec = {"kind": "train", "epoch": step // 5, "step": step, "loss": 2.0 / step, "loss_mim": 1.5 / step,
               "ete": 0.4 * step, "time": 30.0 * step}  # fmt: skip
        if loss_vis:
            rec["loss_vis"] = 0.5 / step
        lines.append(rec)
    if with_eval:
        lines += [{"kind": "eval", "epoch": e, "step": 5 * e, "knn_top1": 0.1 * e, "linprobe_top1": 0.15 * e}
                  for e in (1, 2, 3, 4)]  # fmt: skip
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")


def test_curves_of_several_runs(tmp_path):
    _write_run(tmp_path / "dmjd")
    _write_run(tmp_path / "mae", with_eval=False, loss_vis=False)
    path = save_curves_figure([tmp_path / "dmjd", tmp_path / "mae"], tmp_path / "out" / "curves.png")
    assert_drawn_png(path, (1000, 300))
    records = [json.loads(line) for line in (tmp_path / "dmjd" / "metrics.jsonl").read_text().splitlines()]
    assert run_summary(records) == pytest.approx({"final_loss": 0.1, "final_loss_mim": 0.075, "final_loss_vis": 0.025,
                                                  "final_ete": 8.0, "final_time": 600.0, "knn_top1": 0.4,
                                                  "linprobe_top1": 0.6})  # fmt: skip


def test_curves_errors(tmp_path):
    with pytest.raises(ValueError, match="no metrics.jsonl"):
        save_curves_figure([tmp_path], tmp_path / "c.png")
    _write_run(tmp_path / "run")
    with pytest.raises(ValueError, match="labels"):
        save_curves_figure([tmp_path / "run"], tmp_path / "c.png", labels=["a", "b"])
