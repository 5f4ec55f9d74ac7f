"""Fixed-ETE benchmarks (issue 30): the ETE grid, identical figures from identical commands, a study
continued over several sittings, bad input in one line, and the reading at equal ETE."""

from __future__ import annotations

import json
import signal
from dataclasses import asdict
from pathlib import Path

import pytest

from dmjd.bench import efficiency
from dmjd.bench.analysis import aggregate
from dmjd.bench.analysis import difference_verdict as verdict
from dmjd.bench.efficiency import run_efficiency
from dmjd.bench.equal_ete import analyse_equal_ete, ratio_verdict
from dmjd.bench.evaluators import EteEvaluator, ete_grid
from dmjd.cli import main
from dmjd.engine.metrics import read_metrics
from dmjd.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")
SMOKE = {"sections": ["core"], "seeds": [0], "ete": 2.0}


def test_ete_grid_holds_the_powers_of_two_and_evenly_spaced_points():
    grid = ete_grid(100.0)
    assert {1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 12.5, 25.0, 50.0, 87.5, 100.0} <= set(grid)
    assert grid == tuple(sorted(grid)) and grid[-1] == 100.0 and len(grid) == 15
    assert ete_grid(2.0) == (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


def _figures(out: Path) -> dict[str, object]:
    """Everything a fixed-ETE benchmark measured except times: evaluation points, fine-tuning, and
    each epoch's training loss (a resumed run's epoch sums carry over; the logging window in which
    it resumed covers only the steps after it)."""
    results = json.loads((out / "results.json").read_text())
    figures: dict[str, object] = {}
    for key, run in results["runs"].items():
        points = [{k: v for k, v in p.items() if k not in ("time", "eval_s")} for p in run["points"]]
        records = read_metrics(out / "runs" / key / "metrics.jsonl")
        losses = [(r["step"], r["loss"]) for r in records if r.get("kind") == "epoch"]
        figures[key] = {"points": points, "finetune": run["finetune_top1"], "losses": losses}
    return figures


@pytest.fixture(scope="module")
def first_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ete") / "a"
    run_efficiency("smoke", out, **SMOKE)
    return out


def test_the_same_fixed_ete_command_gives_identical_figures_and_a_rerun_trains_nothing(first_study, tmp_path, monkeypatch):
    run_efficiency("smoke", tmp_path / "b", **SMOKE)
    first = _figures(first_study)
    assert first == _figures(tmp_path / "b")
    steps = {key: [s for s, _ in f["losses"]] for key, f in first.items()}  # type: ignore[index]
    assert steps == {"core-mae-seed0": [4, 8], "core-dmjd-seed0": [4]}  # 4 steps/epoch: 2 ETE
    assert all(p["ete"] <= 2.0 for f in first.values() for p in f["points"])  # type: ignore[index]

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(efficiency, "train_run", no_training)
    monkeypatch.setattr(efficiency, "baselines", no_training)  # the saved ones are kept
    saved = json.loads((first_study / "results.json").read_text())["baselines"]
    results = run_efficiency("smoke", first_study, **SMOKE)
    assert _figures(first_study) == first and len(results["sittings"]) == 2 and results["baselines"] == saved


def test_an_interrupted_study_continues_exactly_where_it_stopped(first_study, tmp_path, monkeypatch):
    """SIGINT in the middle of the second run: the checkpoint is saved, the same command continues
    that run from it (the first run is kept), and every figure equals the uninterrupted study's."""
    on_step_end = EteEvaluator.on_step_end

    def interrupt_dmjd_at_step_1(self, trainer):
        if trainer.masking.num_views == 2 and trainer.state.opt_step == 1:
            trainer.stop.signum = signal.SIGINT
        return on_step_end(self, trainer)

    monkeypatch.setattr(EteEvaluator, "on_step_end", interrupt_dmjd_at_step_1)
    with pytest.raises(Exception, match="SIGINT received"):
        run_efficiency("smoke", tmp_path / "c", **SMOKE)
    assert (tmp_path / "c" / "runs" / "core-dmjd-seed0" / "checkpoint-last.pth").is_file()
    assert list(json.loads((tmp_path / "c" / "results.json").read_text())["runs"]) == ["core-mae-seed0"]
    monkeypatch.setattr(EteEvaluator, "on_step_end", on_step_end)
    run_efficiency("smoke", tmp_path / "c", **SMOKE)
    assert _figures(tmp_path / "c") == _figures(first_study)
    assert not list((tmp_path / "c" / "runs").rglob("*.pth"))  # checkpoints go once the result is saved


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--ete", "0"], "--ete must be a positive number"),
        (["--ete", "-3"], "--ete must be a positive number"),
        (["--ete", "abc"], "--ete takes a number of effective training epochs, got 'abc'"),
        (["--ete", "2", "--budget-s", "5"], "--ete and --budget-s are two ways to end a run"),
        (["--ete", "3", "--sections", "core"], "--ete 3 is not a whole number of epochs for DMJD (K = 2"),
    ],
)
def test_bad_ete_is_one_line_and_writes_nothing(args, words, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["bench", "--testbed", "smoke", "--output-dir", str(out), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert not out.exists()


def test_the_readme_command_runs_the_testbeds_sections_without_its_step_profile(tmp_path, capsys):
    out = tmp_path / "ete"
    assert main(["bench", "--testbed", "smoke", "--ete", "2", "--seeds", "0", "--output-dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["sections"] == ["main"] and "profile" not in results and len(results["runs"]) == 6


def test_a_folder_of_something_else_or_other_settings_is_refused_untouched(first_study, tmp_path):
    before = (first_study / "results.json").read_bytes()
    with pytest.raises(InputError, match="holds a benchmark with other ete"):
        run_efficiency("smoke", first_study, sections=["core"], seeds=[0], ete=4.0)
    with pytest.raises(InputError, match="holds a benchmark with other seeds"):
        run_efficiency("smoke", first_study, sections=["core"], seeds=[0, 1], ete=2.0)
    assert (first_study / "results.json").read_bytes() == before
    other = tmp_path / "pretrain-run"
    other.mkdir()
    (other / "config.yaml").write_text("model: {}\n")
    with pytest.raises(InputError, match="is not empty and holds no benchmark"):
        run_efficiency("smoke", other, **SMOKE)
    assert [p.name for p in other.iterdir()] == ["config.yaml"]


def test_the_fixed_ete_report_reads_pairs_at_equal_ete(first_study):
    report = (first_study / "report.md").read_text()
    assert "2 ETE per run" in report and "Pairs at equal ETE" in report and "core_ete.png" in report
    assert "- DMJD - MAE at ETE 2: linear" in report and "core_time.png" not in report


def _synthetic(curves: dict[str, dict[str, list[tuple[float, float]]]], finetune: dict[str, dict[str, float]]) -> dict:
    """Results of a fixed-ETE comparison with the given linear-probe curves per label and seed."""
    runs, variants = {}, []
    for label, by_seed in curves.items():
        keys = {}
        for seed, points in by_seed.items():
            key = f"{label}-{seed}"
            keys[seed] = key
            runs[key] = {"points": [{"ete": x, "linprobe_top1": y, "time": x} for x, y in points],
                         "finetune_top1": finetune[label][seed], "summary": {"epochs": 1, "time_s": 1.0},
                         "epochs": 1, "num_views": 1, "pred_ratio": 0.75, "peak_lr": 1e-3}  # fmt: skip
        variants.append({"label": label, "runs": keys})
    section = {"expected_pairs": [["A", "B"]]}
    return {"ete": 8.0, "metrics": {"linprobe_top1": "linear probe"}, "runs": runs,
            "comparisons": {"c": {"baseline": "A", "variants": variants, "section": section}}}  # fmt: skip


def test_equal_ete_analysis_pairs_seeds_and_reads_the_ete_speedup():
    a = {str(s): [(0.0, 0.1), (4.0, 0.4 + 0.01 * s), (8.0, 0.5 + 0.01 * s)] for s in range(3)}
    b = {str(s): [(0.0, 0.1), (4.0, 0.5 + 0.01 * s), (8.0, 0.6 + 0.01 * s + 0.001 * s)] for s in range(3)}
    ft = {"A": {"0": 0.7, "1": 0.71, "2": 0.72}, "B": {"0": 0.71, "1": 0.73, "2": 0.72}}
    analysis = analyse_equal_ete(_synthetic({"A": a, "B": b}, ft), "c")
    assert analysis["grid"][0] == 0.0 and analysis["grid"][-1] == 8.0
    (pair,) = analysis["pairs"]
    lin = pair["linprobe_top1"]
    assert lin["diff_at_end"]["mean"] == pytest.approx(10.1) and lin["diff_at_end"]["ci_low"] > 0
    assert verdict(lin["diff_at_end"]) == "higher (resolved)"
    # B reaches A's final (0.5 + 0.01 s) at ETE 4 * (0.4 + 0.01 s) / (0.4 + 0.01 s) = 4: twice as fast as A's 8
    assert lin["ete_speedup"]["mean"] == pytest.approx(2.0) and lin["reached"] == 3
    assert ratio_verdict(lin["ete_speedup"], lin["reached"], lin["seeds"]) == "faster (resolved)"
    assert pair["finetune"]["mean"] == pytest.approx(1.0)
    assert verdict(pair["finetune"]) == "higher, not resolved"


def test_verdict_words_follow_the_sign_and_the_interval():
    assert verdict({"mean": -1.2, "ci_low": -3.0, "ci_high": 0.5}) == "lower, not resolved"
    assert verdict({"mean": -1.2, "ci_low": -2.0, "ci_high": -0.5}) == "lower (resolved)"
    assert verdict({"mean": 0.4, "ci_low": None, "ci_high": None}) == "one seed, no CI"
    # two seeds tied exactly (+3.4 on 325 test images): a zero-width interval is no resolution
    tied = {"mean": 3.4, "std": 0.0, "n": 2, "ci_low": 3.4, "ci_high": 3.4}
    assert verdict(tied) == "higher by the same amount on all 2 seeds (no spread: no CI)"
    # as the study computed it: three seeds each +11 of 325 images, equal up to float round-off
    diffs = [0.3630769230769231 - 0.3292307692307692, 0.36 - 0.3261538461538461, 0.3723076923076923 - 0.3384615384615385]
    assert verdict(asdict(aggregate(diffs))) == "higher by the same amount on all 3 seeds (no spread: no CI)"
    assert ratio_verdict({"mean": None}, 0, 3) == "never reached (0/3 seeds)"
    assert ratio_verdict({"mean": 0.8, "ci_low": 0.6, "ci_high": 0.9}, 3, 3) == "slower (resolved)"
