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
    with pytest.raises(ValueError, match=r"1..20"):
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
    with pytest.raises(ValueError, match=r"no metrics.jsonl"):
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
    assert np.bincount(labels[pick_images(labels, 10, 5)], minlength=4).tolist() in (
        [3, 3, 2, 2],
        [3, 2, 3, 2],
        [3, 2, 2, 3],
        [2, 3, 3, 2],
        [2, 3, 2, 3],
        [2, 2, 3, 3],
    )
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
    shown = {s: drawn_images("imagefolder", str(tmp_path), tf, 3, s)[:, 0, 0, 0].mul(255).round() for s in (0, 1)}
    for grey in shown.values():
        assert sorted((grey // 50).tolist()) == [0, 1, 2]  # one image of each class
    assert not torch.equal(shown[0], shown[1])


def test_hog_panels_draw_one_glyph_per_cell_at_a_readable_size(tmp_path):
    from dmjd.config import load_config
    from dmjd.data import Normalize
    from dmjd.engine.builders import build_dmjd_model, build_masking, build_target
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
    assert cells_per_side * HOG_CELL_PX > DPI * 1.4  # the former 1.4-inch panels gave a cell under 10 px


# ---------------------------------------------------------------------------------- plot
def _plot_cli(argv):
    import argparse

    from dmjd.eval.commands import register_eval_commands

    parser = argparse.ArgumentParser(prog="dmjd")
    register_eval_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


def test_plot_of_several_runs_never_replaces_a_runs_own_curves(tmp_path, capsys):
    from dmjd.eval.plot import default_figure_path

    for name in ("dmjd", "mae", "simmim"):
        _write_run(tmp_path / name)
        (tmp_path / name / "curves.png").write_bytes(b"drawn by pre-training")
    assert _plot_cli(["plot", tmp_path / "dmjd", tmp_path / "mae", tmp_path / "simmim"]) == 0
    for name in ("dmjd", "mae", "simmim"):
        assert (tmp_path / name / "curves.png").read_bytes() == b"drawn by pre-training"
    figure = tmp_path / "dmjd" / "curves-vs-mae-simmim.png"
    assert_drawn_png(figure)
    assert figure.with_suffix(".json").is_file() and not (tmp_path / "dmjd" / "curves.json").exists()
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["figure"] == str(figure)
    assert default_figure_path([tmp_path / "mae"]) == tmp_path / "mae" / "curves.png"  # one run: its own, redrawn


def test_plot_keeps_poolings_apart_and_draws_raw_pixels_as_a_reference_line(tmp_path):
    from dmjd.eval.plot import curves_figure, read_evals, read_run

    _write_run(tmp_path / "run")
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        record = {"kind": "eval", "epoch": 0, "step": 0, "ete": 0, "knn_top1": 0.05, "pixels_knn_top1": 0.3}
        f.write(json.dumps(record) + "\n")
    evals = [{"kind": "knn", "protocol": "weighted-knn", "pool": pool, "knn_top1": top1, "ete": 4, "epoch": 2}
             for pool, top1 in (("cls", 0.5), ("avg", 0.6))]  # fmt: skip
    (tmp_path / "run" / "evals.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evals))
    summary = run_summary(read_run(tmp_path / "run"), read_evals(tmp_path / "run"))
    assert summary["evaluation knn_top1 (weighted-knn, pool cls)"] == 0.5
    assert summary["evaluation knn_top1 (weighted-knn, pool avg)"] == 0.6 and summary["pixels_knn_top1"] == 0.3
    lines = {line.get_label(): line for line in curves_figure([tmp_path / "run"]).axes[2].get_lines()}
    assert {"run knn_top1 (weighted-knn, pool cls)", "run knn_top1 (weighted-knn, pool avg)"} <= set(lines)
    pixels = lines["run raw pixels knn_top1"]
    assert list(pixels.get_xdata()) == [0, 1] and list(pixels.get_ydata()) == [30.0, 30.0]  # across the axes
    assert not any("pixels_knn_top1" in label for label in lines)  # no longer a point at ETE 0


def test_an_evaluation_written_elsewhere_is_still_recorded_in_the_checkpoints_run(tmp_path):
    from dmjd.engine.metrics import read_metrics
    from dmjd.eval.commands import record_evaluation

    _write_run(tmp_path / "run")
    elsewhere = tmp_path / "results"
    elsewhere.mkdir()
    result = {"kind": "knn", "protocol": "weighted-knn", "knn_top1": 0.5, "checkpoint": str(tmp_path / "run" / "c.pth")}
    record_evaluation(result, elsewhere, {"epoch": 2, "step": 8, "ete": 4}, [elsewhere / "knn.json"])
    here, home = read_metrics(elsewhere / "evals.jsonl"), read_metrics(tmp_path / "run" / "evals.jsonl")
    assert len(here) == len(home) == 1 and home[0]["knn_top1"] == 0.5 and home[0]["ete"] == 4
    assert here[0]["files"] == ["knn.json"] and home[0]["files"] == ["../results/knn.json"]
    record_evaluation(result, tmp_path / "run", {"epoch": 2, "step": 8, "ete": 4}, [])  # its own run: once
    assert len(read_metrics(tmp_path / "run" / "evals.jsonl")) == 2
    record_evaluation({**result, "checkpoint": str(elsewhere / "c.pth")}, tmp_path / "run", {}, [])  # no run there
    assert len(read_metrics(elsewhere / "evals.jsonl")) == 1
