"""The feature check (``dmjd.bench.feature_check``): pooling, standardisation, and its rows against the monitor's probe."""

import pytest
import torch

from dmjd.bench.feature_check import feature_scores, grid_pool, hog_descriptor, main, standardised
from dmjd.eval.loading import load_encoder
from dmjd.eval.monitor import OnlineMonitor
from test_eval_checkpoints import write_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def test_grid_pool_is_the_mean_on_one_cell_and_every_token_on_the_full_grid():
    tokens = torch.randn(3, 6, 5)  # 2 x 3 grid of 5-dim tokens
    torch.testing.assert_close(grid_pool(tokens, (2, 3), 1), tokens.mean(1))
    full = grid_pool(tokens, (2, 3), 2)  # 2 x 2 regions of a 2 x 3 grid: columns (0, 1), (1, 2) overlap
    assert full.shape == (3, 5 * 4)
    by_region = full.view(3, 5, 2, 2)
    torch.testing.assert_close(by_region[:, :, 1, 0], tokens[:, 3:5].mean(1))


def test_standardised_uses_the_train_statistics_for_both_splits():
    train, test = (torch.randn(50, 4) * 3 + 7, torch.zeros(50)), (torch.full((2, 4), 7.0), torch.zeros(2))
    (x, _), (t, _) = standardised(train, test)
    torch.testing.assert_close(x.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(0), torch.ones(4))
    expected = (7.0 - train[0].mean(0)) / train[0].std(0)
    torch.testing.assert_close(t, expected.expand(2, 4))


def test_hog_descriptor_has_nine_bins_per_cell():
    images = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8)
    assert hog_descriptor(images, 4).shape == (2, 8 * 8 * 9)


def test_rows_and_the_plain_average_match_the_benchmarks_probe(tmp_path, capsys):
    write_checkpoint(tmp_path / "c.pth")
    encoder, cfg = load_encoder(tmp_path / "c.pth")
    monitor = OnlineMonitor.from_config(cfg, max_images=64)
    rows = {r.name: r for r in feature_scores(monitor, encoder)}
    assert list(rows) == [
        "raw pixels", "raw pixels, standardised", "HOG descriptor, 2 px cells", "HOG descriptor, 4 px cells",
        "encoder: class token", "encoder: patch tokens, 1 x 1 average", "encoder: patch tokens, 2 x 2 average",
        "encoder: patch tokens, 4 x 4 average",
    ]  # fmt: skip
    assert rows["encoder: patch tokens, 4 x 4 average"].dim == 16 * cfg.model.embed_dim
    monitor.pool = "avg"
    assert rows["encoder: patch tokens, 1 x 1 average"].knn_top1 == monitor(encoder)["knn_top1"]
    assert rows["raw pixels"].knn_top1 == monitor.raw_pixels()["knn_top1"]

    assert main(["--checkpoint", str(tmp_path / "c.pth"), "--max-images", "64", "--hog-cells", "4"]) == 0
    table = capsys.readouterr().out
    assert "| HOG descriptor, 4 px cells | 576 |" in table and "2 px cells" not in table
    assert ", 64 train / 64 test images" in table  # the splits' sizes, not the --max-images cap


def test_hog_cells_that_do_not_divide_the_image_get_a_clear_error(tmp_path, capsys):
    write_checkpoint(tmp_path / "c.pth")
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(tmp_path / "c.pth"), "--hog-cells", "4,3"])
    assert "--hog-cells must divide the image side 32, got 4,3" in capsys.readouterr().err


def test_a_missing_checkpoint_gets_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(tmp_path / "none.pth")])
    assert "none.pth does not exist" in capsys.readouterr().err
