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


# ----------------------------------------------------------------------------- visualize
def test_pick_images_is_a_seeded_sample_that_takes_the_classes_in_turn():
    from dmjd.eval.visualize import pick_images

    labels = np.repeat(np.arange(4), 25)  # a class-sorted data set
    picks = {seed: pick_images(labels, 4, seed) for seed in range(3)}
    for idx in picks.values():
        assert sorted(labels[idx].tolist()) == [0, 1, 2, 3]  # the first N test images were all class 0
    assert len({tuple(idx) for idx in picks.values()}) == 3 and np.array_equal(picks[0], pick_images(labels, 4, 0))
    assert np.bincount(labels[pick_images(labels, 10, 5)], minlength=4).tolist() in ([3, 3, 2, 2], [3, 2, 3, 2],
                                                                                     [3, 2, 2, 3], [2, 3, 3, 2],
                                                                                     [2, 3, 2, 3], [2, 2, 3, 3])
    unlabelled = pick_images(np.full(30, -1), 6, 1)
    assert len(set(unlabelled.tolist())) == 6 and not np.array_equal(unlabelled, np.arange(6))
    assert sorted(pick_images(labels[:3], 8).tolist()) == [0, 1, 2]


def test_drawn_images_sample_the_classes_of_a_sorted_folder(tmp_path):
    from dmjd.data import eval_transform
    from dmjd.eval.visualize import drawn_images

    for c in range(3):  # a flat class-folder tree (no val/): visualize draws its own images
        (tmp_path / f"class{c}").mkdir()
        for i in range(5):
            Image.new("L", (8, 8), color=10 * (5 * c + i)).save(tmp_path / f"class{c}" / f"{i}.png")
    tf = eval_transform(8, 1)
    shown = {seed: (drawn_images("imagefolder", str(tmp_path), tf, 3, seed)[:, 0, 0, 0] * 255).round() for seed in (0, 1)}
    for grey in shown.values():
        assert sorted((grey // 50).tolist()) == [0, 1, 2]  # one image of each class
    assert not torch.equal(shown[0], shown[1])


def test_hog_panels_draw_one_glyph_per_cell_at_a_readable_size(tmp_path):
    from dmjd.config import load_config
    from dmjd.data import Normalize
    from dmjd.engine.builders import build_masking
    from dmjd.engine.trainer import build_dmjd_model, build_target
    from dmjd.eval.visualize import DPI, HOG_CELL_PX, hog_glyphs, save_reconstruction_figure

    cells = np.zeros((2, 3, 4))
    cells[..., 0] = 1.0  # bin 0: gradient at 22.5 deg, so edges at 112.5 deg
    cells[1, 2] = [0.0, 0.0, 0.5, 0.0]
    segments, strength = hog_glyphs(cells)
    assert segments.shape == (6, 2, 2) and strength.tolist() == pytest.approx([1, 1, 1, 1, 1, 0.5])
    direction = segments[:, 1] - segments[:, 0]
    angles = np.degrees(np.arctan2(direction[:, 1], direction[:, 0])) % 180
    np.testing.assert_allclose(angles, [112.5] * 5 + [22.5])
    np.testing.assert_allclose(segments.mean(1)[-1], [2.5, 1.5])  # the centre of cell (row 1, column 2)

    cfg = load_config(None, ["model.img_size=32", "model.patch_size=8", "model.in_chans=1", "model.embed_dim=32",
                             "model.depth=1", "model.num_heads=2", "model.decoder_dim=32", "model.decoder_depth=1",
                             "model.decoder_heads=2", "model.vdb_hidden=32", "masking.num_views=2",
                             "target.name=hog", "target.cell_size=2"])  # fmt: skip
    target = build_target(cfg)
    torch.manual_seed(0)
    model = build_dmjd_model(cfg, target.dim)
    path = save_reconstruction_figure(model, target, build_masking(cfg), Normalize((0.5,), (0.25,)),
                                      torch.rand(1, 1, 32, 32), tmp_path / "hog.png")  # fmt: skip
    cols, cells_per_side = 1 + 2 + 2 + 1, 16  # image, 2 views, 2 predictions, target; 32 px / 2-px cells
    assert_drawn_png(path, (cols * cells_per_side * HOG_CELL_PX, cells_per_side * HOG_CELL_PX))
    assert DPI * 1.4 < cells_per_side * HOG_CELL_PX  # the former 1.4-inch panels gave a cell under 10 px
