"""``dmjd compare`` continues (issue 33 item 4, issue 30 item 5): a comparison whose process died
completes when the same command runs again, keeping its finished runs; a comparison into a folder of
other settings is refused; the report says which cost regime the machine is in."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dmjd.bench import efficiency
from dmjd.bench.compare import run_compare
from dmjd.bench.cost import regime_sentence
from dmjd.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = 1e10


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("labelled")
    rng = np.random.default_rng(0)
    for c in range(3):
        (root / f"class{c}").mkdir()
        for i in range(20):
            Image.fromarray((rng.random((16, 16, 3)) * 100 + 70 * c).astype("uint8")).save(root / f"class{c}" / f"{i}.png")
    return root


class Died(BaseException):
    """Stands in for kill -9: nothing after it runs (not an Exception, so no handler catches it)."""


def test_a_comparison_that_died_completes_when_the_same_command_runs_again(labelled, tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    train_run, calls = efficiency.train_run, []

    def die_in_the_second_run(cfg, run_dir, *args, **kwargs):
        calls.append(run_dir.name)
        if len(calls) == 2:
            raise Died
        return train_run(cfg, run_dir, *args, **kwargs)

    monkeypatch.setattr(efficiency, "train_run", die_in_the_second_run)
    with pytest.raises(Died):
        run_compare(str(labelled), out, 1.0, seeds=(0,), finetune_epochs=0, flops_per_s=CPU)
    saved = json.loads((out / "results.json").read_text())
    assert list(saved["runs"]) == ["compare-mae-seed0"] and not (out / "report.md").exists()
    monkeypatch.setattr(efficiency, "train_run", train_run)
    results = run_compare(str(labelled), out, 1.0, seeds=(0,), finetune_epochs=0, flops_per_s=CPU)
    assert list(results["runs"]) == ["compare-mae-seed0", "compare-dmjd-seed0"]
    assert results["runs"]["compare-mae-seed0"] == saved["runs"]["compare-mae-seed0"]  # kept, not retrained
    report = (out / "report.md").read_text()
    assert "Cost per view on this machine:" in report and "held the data in memory" in report
    cost = results["cost"]
    assert cost["in_memory"] and cost["baseline"] == "MAE" and set(cost["methods"]) == {"MAE", "DMJD"}
    assert cost["methods"]["DMJD"]["num_views"] == 2 and cost["loader_images_per_core"] > 0


def test_the_same_folder_with_another_budget_is_refused_in_one_line(labelled, tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", str(labelled), "--budget", "1s", "--seeds", "1", "--finetune-epochs", "0", "--output-dir", str(out)]
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"benchmark": "dmjd efficiency", "settings": {"budget_s": 99.0}}))
    before = (out / "results.json").read_bytes()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a benchmark with other" in err[0] and "--overwrite" in err[0], err
    assert (out / "results.json").read_bytes() == before


def test_regime_sentences_say_whether_dms_loading_saving_applies():
    split = {"in_memory": False, "loader_images_per_core": 100.0, "loader_cores": 1, "baseline": "MAE",
             "methods": {"MAE": {"num_views": 1, "compute_views_per_s": 500.0, "views_per_s": 100.0, "bound": "data",
                                 "speedup": 1.0},
                         "DMJD": {"num_views": 2, "compute_views_per_s": 400.0, "views_per_s": 200.0, "bound": "data",
                                  "speedup": 2.0}}}  # fmt: skip
    text = regime_sentence(split)
    assert "MAE would be data-bound" in text and "DMJD 2.00x MAE's views/s" in text and "saving applies" in text
    assert "shared with the step" not in text  # a comparison saved before shared_cores existed reads as before
    split["shared_cores"] = True
    assert "1 core(s) shared with the step" in regime_sentence(split)
    split["in_memory"] = True
    assert "loading saving does not apply here" in regime_sentence(split)
