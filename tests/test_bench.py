"""The benchmark's logic: curve arithmetic, speed-ups, aggregation, run planning, the report's
reading, the FLOP counter, and a smoke run of the whole efficiency benchmark."""

from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dmjd.bench import register_bench_command
from dmjd.bench.analysis import Curve, aggregate, common_end, first_reach, speedup, value_at
from dmjd.bench.efficiency import analyse_comparison, plan_runs, run_efficiency
from dmjd.bench.evaluators import PeriodicEvaluator, eval_interval
from dmjd.bench.report import reading
from dmjd.bench.testbeds import SECTIONS, TESTBEDS
from dmjd.bench.throughput import peak_bf16_flops, step_flops, synthetic_images, throughput_config
from dmjd.config.duration import parse_duration
from dmjd.engine import Pretrainer


# ------------------------------------------------------------------------------ curve arithmetic
def test_first_reach_interpolates_between_points():
    c = Curve((0.0, 10.0, 20.0), (0.1, 0.5, 0.7))
    assert first_reach(c, 0.6) == pytest.approx(15.0)
    assert first_reach(c, 0.5) == pytest.approx(10.0)
    assert first_reach(c, 0.05) == 0.0
    assert first_reach(c, 0.71) is None


def test_first_reach_takes_the_first_crossing_of_a_noisy_curve():
    c = Curve((0.0, 10.0, 20.0, 30.0), (0.1, 0.65, 0.5, 0.6))
    assert first_reach(c, 0.6) == pytest.approx(10.0 * 0.5 / 0.55)


def test_value_at_interpolates_and_holds_the_final_accuracy():
    c = Curve((0.0, 2.0, 4.0), (0.2, 0.4, 0.3))
    assert value_at(c, 1.0) == pytest.approx(0.3)
    assert value_at(c, 3.0) == pytest.approx(0.35)
    assert value_at(c, 100.0) == pytest.approx(0.3)
    assert common_end([c, Curve((0.0, 3.0), (0.1, 0.2))]) == 3.0


def test_curve_rejects_bad_input():
    with pytest.raises(ValueError):
        Curve((0.0, 2.0, 1.0), (0.1, 0.2, 0.3))
    with pytest.raises(ValueError):
        Curve((), ())
    with pytest.raises(ValueError):
        Curve((0.0,), (0.1, 0.2))


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(st.floats(0.1, 10.0), min_size=1, max_size=8),
    ys=st.lists(st.floats(0.0, 1.0), min_size=9, max_size=9),
    level=st.floats(0.0, 1.0),
)
def test_first_reach_is_where_the_curve_first_meets_the_level(steps, ys, level):
    xs = [0.0]
    for s in steps:
        xs.append(xs[-1] + s)
    c = Curve(tuple(xs), tuple(ys[: len(xs)]))
    x = first_reach(c, level)
    if x is None:
        assert max(c.y) < level
        return
    assert value_at(c, x) >= level - 1e-9
    # Every evaluation point before x is below the level, and the curve meets it exactly at x
    # unless the very first point already does.
    assert all(y < level for px, y in zip(c.x, c.y) if px < x - 1e-9)
    if x > c.x[0]:
        assert value_at(c, x) == pytest.approx(level, abs=1e-9)


def test_speedup_on_synthetic_curves():
    base = Curve((0.0, 10.0, 20.0, 30.0), (0.1, 0.4, 0.5, 0.6))
    fast = Curve((0.0, 10.0, 20.0), (0.1, 0.7, 0.8))  # reaches 0.6 at 10 * 5/6
    s = speedup(base, fast)
    assert s.level == 0.6 and s.baseline_x == 30.0
    assert s.variant_x == pytest.approx(25.0 / 3.0)
    assert s.ratio == pytest.approx(3.6)
    never = speedup(base, Curve((0.0, 10.0, 40.0), (0.1, 0.5, 0.55)))
    assert never.variant_x is None and never.ratio is None
    assert speedup(base, base).ratio == pytest.approx(1.0)
    # A noisy baseline reaches its own final accuracy before its last point.
    noisy = Curve((0.0, 10.0, 20.0, 30.0), (0.1, 0.65, 0.5, 0.6))
    assert speedup(noisy, fast).baseline_x == pytest.approx(10.0 * 0.5 / 0.55)


def test_aggregate_mean_spread_and_undefined_values():
    s = aggregate([0.5, 0.7, None])
    assert s.mean == pytest.approx(0.6) and s.std == pytest.approx(math.sqrt(0.02))
    assert (s.min, s.max, s.n, s.total) == (0.5, 0.7, 2, 3)
    one = aggregate([0.4])
    assert one.mean == 0.4 and one.std is None
    none = aggregate([None, None])
    assert none.mean is None and none.n == 0 and none.total == 2


def test_eval_interval_spaces_the_points():
    assert eval_interval(12, 4) == 3 and eval_interval(13, 4) == 4 and eval_interval(2, 4) == 1


def test_benchmark_runs_are_budgeted_by_the_engine():
    """One copy of the budget logic: every run gets train.budget (the engine plans its schedule)."""
    runs, _ = plan_runs(TESTBEDS["smoke"], ["core"], [0], 7.0, None, None)
    for run in runs:
        assert parse_duration(run.cfg.train.budget) == 7.0 and run.cfg.train.budget_plan is None
        assert run.cfg.train.budget_tolerance == 0.05 and run.cfg.train.max_time_s is None


def test_evaluator_spaces_points_over_a_budgeted_runs_plan():
    evaluator = PeriodicEvaluator(lambda encoder: {"knn_top1": 0.5}, points=4)
    trainer = _trainer(3)
    trainer.budget = SimpleNamespace(plan=None)
    assert evaluator.on_step_end(trainer) is None and evaluator.every_steps is None  # no plan yet
    trainer.budget.plan = SimpleNamespace(total_steps=40)
    trainer.state.opt_step = 10
    assert evaluator.on_step_end(trainer) is not None and evaluator.every_steps == 10


def _trainer(step: int, time_up: bool = False, finished: bool = False) -> SimpleNamespace:
    return SimpleNamespace(state=SimpleNamespace(opt_step=step), finished=finished, time_up=time_up,
                           model=SimpleNamespace(encoder="enc"), budget=None)  # fmt: skip


def test_evaluator_runs_before_training_every_few_steps_and_at_the_end():
    calls = []
    evaluator = PeriodicEvaluator(lambda encoder: calls.append(encoder) or {"knn_top1": 0.5}, every_steps=30)
    assert evaluator.on_epoch_end(_trainer(0)) is not None  # the untrained encoder
    due = [s for s in range(1, 100) if evaluator.on_step_end(_trainer(s)) is not None]
    assert due == [30, 60, 90]
    assert evaluator.on_epoch_end(_trainer(47)) is None  # an epoch end between evaluations
    assert evaluator.on_epoch_end(_trainer(90)) is None  # already evaluated at this step
    result = evaluator.on_epoch_end(_trainer(97, time_up=True))
    assert result["knn_top1"] == 0.5 and result["eval_s"] >= 0 and calls == ["enc"] * 5
    assert evaluator.on_step_end(_trainer(120, finished=True)) is None  # the run's end: left to the epoch hook
    assert evaluator.on_epoch_end(_trainer(120, finished=True)) is not None  # optim.max_steps ended the run


def test_evaluator_without_a_step_interval_runs_every_epoch():
    evaluator = PeriodicEvaluator(lambda encoder: {"knn_top1": 0.5})
    assert [s for s in range(1, 50) if evaluator.on_step_end(_trainer(s)) is not None] == []
    assert evaluator.on_epoch_end(_trainer(16)) is not None and evaluator.on_epoch_end(_trainer(32)) is not None


# ---------------------------------------------------------------------------------- planning
def test_shared_configurations_train_once_per_seed():
    runs, comparisons = plan_runs(TESTBEDS["cpu"], ["main", "pred_ratio", "decoder"], [0, 1], 60.0, None, None)
    keys = [r.key for r in runs]
    assert len(keys) == len(set(keys))
    # pred_ratio shares MAE and m_pred 1.0 (= +DM) with main; decoder's five variants use random
    # masking with HOG, which no main variant combines: 6 + 2 + 5 distinct configurations per seed.
    assert len(runs) == 2 * (6 + 2 + 5)
    pred = {v["label"]: v["runs"] for v in comparisons["pred_ratio"]["variants"]}
    main = {v["label"]: v["runs"] for v in comparisons["main"]["variants"]}
    dec = {v["label"]: v["runs"] for v in comparisons["decoder"]["variants"]}
    assert pred["MAE (m_pred 0.75)"] == main["MAE"] and pred["m_pred 1.00"] == main["+DM"]
    assert dec["depth 2, nonlinear"] != main["DMJD"]  # DMJD masks blocks, the decoder study random tokens
    assert main["MAE"]["0"] != main["MAE"]["1"]
    by_key = {r.key: r for r in runs}
    dmjd = by_key[main["DMJD"]["0"]].cfg
    assert (dmjd.masking.num_views, dmjd.target.name, dmjd.model.vdb) == (2, "hog", True)
    mae = by_key[main["MAE"]["1"]].cfg
    assert (mae.masking.num_views, mae.target.name, mae.model.vdb, mae.train.seed) == (1, "pixels", False, 1)
    assert parse_duration(mae.train.budget) == 60.0 and mae.model.embed_dim == dmjd.model.embed_dim


def test_variants_differ_only_in_their_own_keys():
    runs, _ = plan_runs(TESTBEDS["gpu"], ["main"], [0], 10.0, "/data/fmnist", None)
    dumps = [r.cfg.model_dump() for r in runs]
    for section in ("model", "masking", "target", "optim", "data", "train"):
        keys = set(dumps[0][section])
        varying = {k for k in keys if len({json.dumps(d[section][k]) for d in dumps}) > 1}
        masking = {"num_views", "pred_ratio", "mask_ratio", "pattern", "block_size"}  # random 0.75 vs block 0.6
        allowed = {"model": {"vdb"}, "masking": masking, "target": {"name"}}.get(section, set())
        assert varying <= allowed, (section, varying)
    assert all(d["data"]["path"] == "/data/fmnist" for d in dumps)


# ---------------------------------------------------------------------------------- analysis
def _fake_results(curves: dict[str, dict[int, list[tuple[float, float, float]]]], budget: float = 30.0) -> dict:
    """Benchmark results of the ``main`` comparison with the given (time, ete, accuracy) points."""
    runs, variants = {}, []
    for label in ("MAE", "+DM", "+JD", "DMJD"):
        keys = {}
        for seed, points in curves[label].items():
            key = f"{label}-{seed}"
            runs[key] = {
                "points": [{"time": t, "ete": e, "linprobe_top1": a, "knn_top1": a / 2} for t, e, a in points],
                "summary": {"epochs": 3, "time_s": points[-1][0]},
                "epochs": 3, "num_views": 1, "pred_ratio": 0.75, "peak_lr": 1e-3, "error": None,
            }  # fmt: skip
            keys[str(seed)] = key
        variants.append({"label": label, "runs": keys})
    return {"budget_s": budget, "seeds": [0, 1], "runs": runs,
            "comparisons": {"main": {"title": "t", "baseline": "MAE", "variants": variants}}}  # fmt: skip


def _example() -> dict:
    ticks = (0.0, 10.0, 20.0, 30.0)
    return _fake_results({
        "MAE": {0: list(zip(ticks, (0, 1, 2, 3), (0.2, 0.4, 0.5, 0.6))),
                1: list(zip(ticks, (0, 1, 2, 3), (0.2, 0.45, 0.55, 0.62)))},
        "+DM": {s: [(0.0, 0, 0.2), (15.0, 2, 0.6), (30.0, 4, 0.7)] for s in (0, 1)},
        "+JD": {s: [(0.0, 0, 0.2), (15.0, 1.5, 0.3), (30.0, 3, 0.4)] for s in (0, 1)},
        "DMJD": {s: [(0.0, 0, 0.2), (10.0, 2, 0.58), (30.0, 6, 0.64)] for s in (0, 1)},
    })  # fmt: skip


def test_analysis_equal_time_equal_ete_and_speedups_by_hand():
    a = analyse_comparison(_example(), "main")
    assert a["equal_ete"] == 3.0  # MAE and +JD reach ETE 3 only
    lin = a["metrics"]["linprobe_top1"]
    assert lin["MAE"]["at_time"]["mean"] == pytest.approx(0.61)
    assert lin["+DM"]["at_ete"]["mean"] == pytest.approx(0.65)  # halfway between ETE 2 and 4
    assert lin["DMJD"]["at_ete"]["mean"] == pytest.approx(0.58 + 0.06 / 4)
    # +DM reaches 0.6 at 15 s (seed 0) and 0.62 at 18 s (seed 1); MAE needs 30 s for both.
    assert lin["+DM"]["time_to_level"] == {"0": pytest.approx(15.0), "1": pytest.approx(18.0)}
    # speed-ups are ratios: geometric mean over seeds (the std is of the ratios themselves)
    assert lin["+DM"]["speedup"]["mean"] == pytest.approx(math.sqrt(2.0 * 30 / 18))
    assert lin["+DM"]["speedup"]["std"] == pytest.approx(abs(2.0 - 30 / 18) / math.sqrt(2))
    assert lin["+DM"]["ete_speedup"]["mean"] == pytest.approx(math.sqrt(3 / 2 * 3 / 2.4))
    assert lin["+JD"]["reached"] == 0 and lin["+JD"]["speedup"]["mean"] is None
    assert lin["MAE"]["speedup"]["mean"] == pytest.approx(1.0)
    knn = a["metrics"]["knn_top1"]
    assert knn["+DM"]["at_time"]["mean"] == pytest.approx(0.35)


def test_reading_states_matches_and_mismatches_with_the_paper():
    lines = "\n".join(reading({**_example(), "analysis": {"main": analyse_comparison(_example(), "main")}}, "main"))
    assert "At equal wall time (30 s of training), +DM has the highest linear-probe accuracy (70.0 ± 0.0 %)" in lines
    # geometric mean of 2.0 and 1.667 with the 95 % t-interval of the mean log-ratio over 2 seeds
    # (t = 12.71): exp(0.602 -+ 12.71 x 0.129 / sqrt 2)
    assert "+DM's speed-up over MAE: 1.83x [0.57, 5.81]; paper (Tables II-III): 1.8x-3.7x." in lines
    # seed-paired differences at equal time: +DM 70 % vs MAE 60 / 62 %: +9.0 points, CI +-12.7
    assert "+DM > MAE: +9.0 points [-3.7, +21.7] over 2 seeds: not resolved (CI spans 0)" in lines
    # the same ordering in kNN (half the accuracy here): +5.0 and +4.0 points
    assert "+DM > MAE (kNN): +4.5 points [-1.9, +10.9] over 2 seeds: not resolved (CI spans 0)" in lines
    assert "1.8x-3.7x. Ours matches or exceeds it, but its 95 % CI includes 1x (no speed-up): not resolved." in lines
    assert "Did not reach MAE's final linear-probe accuracy within the budget: +JD (2/2 seeds)" in lines
    assert "+JD <= MAE" in lines
    assert "DMJD's linear-probe gain over MAE at equal time: +3.0 points" in lines and "SMALLER" in lines
    assert "(fine-tune)" not in lines  # no run was fine-tuned
    # kNN is half the linear accuracy here, so its speed-ups are the same
    assert "- Speed-up to MAE's final kNN accuracy: +DM 1.83x [0.57, 5.81] in wall time" in lines


def test_reading_pairs_end_of_run_fine_tuning_by_seed():
    results = _example()
    tuned = {"MAE-0": 0.80, "MAE-1": 0.82, "+DM-0": 0.81, "+DM-1": 0.84, "+JD-0": 0.70, "+JD-1": 0.71}
    for key, run in results["runs"].items():
        run["finetune_top1"] = tuned.get(key)
    lines = "\n".join(reading({**results, "analysis": {"main": analyse_comparison(results, "main")}}, "main"))
    # +1 and +2 points: mean +1.5, 95 % CI +-12.71 x 0.707 / sqrt 2
    assert "+DM > MAE (fine-tune): +1.5 points [-4.9, +7.9] over 2 seeds: not resolved (CI spans 0)" in lines
    assert "+JD > MAE (fine-tune): -10.5 points [-16.9, -4.1] over 2 seeds: REVERSED (95 % CI below 0)" in lines
    assert "DMJD > MAE (fine-tune): no paired seeds" in lines  # DMJD was not fine-tuned


# -------------------------------------------------------------------------------- throughput
def test_peak_table_picks_the_specific_card():
    assert peak_bf16_flops("NVIDIA H100 PCIe") == ("H100 PCIe", 756e12)
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == ("H100", 989e12)
    assert peak_bf16_flops("NVIDIA H200") == ("H200", 989e12)
    assert peak_bf16_flops("NVIDIA A100-SXM4-40GB") == ("A100", 312e12)
    assert peak_bf16_flops("Tesla T4") is None


def test_flop_count_is_positive_and_linear_in_the_batch(tmp_path):
    cfg = throughput_config("cpu-small", "DMJD", 4, "cpu")
    trainer = Pretrainer(cfg, tmp_path, overwrite=True)
    small = step_flops(trainer, synthetic_images(trainer, 4))
    large = step_flops(trainer, synthetic_images(trainer, 8))
    assert small > 0
    assert large == pytest.approx(2 * small, rel=1e-6)
    # At least the encoder blocks' matmuls: 3 passes x 2 FLOPs x weights x tokens of K views.
    blocks = sum(p.numel() for n, p in trainer.model.encoder.blocks.named_parameters() if p.ndim == 2)
    tokens = 4 * cfg.masking.num_views * (1 + trainer.masking.grid_size[0] ** 2 - trainer.masking.num_masked)
    assert small > 3 * 2 * blocks * tokens


# ---------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    run_efficiency("smoke", out, sections=["main", "profile"], command="dmjd bench --testbed smoke")
    return out


def test_smoke_benchmark_writes_results_report_and_figures(smoke_dir):
    results = json.loads((smoke_dir / "results.json").read_text())
    assert set(results["runs"]) == {f"main-{s}-seed0" for s in ("mae", "dm", "mae-block", "dm-block", "jd", "dmjd")}
    for run in results["runs"].values():
        points = run["points"]
        assert points[0]["time"] == 0.0 and points[0]["ete"] == 0.0 and len(points) >= 2
        assert all(b["time"] >= a["time"] and b["ete"] >= a["ete"] for a, b in itertools.pairwise(points))
        assert all(0.0 <= p[m] <= 1.0 for p in points for m in ("knn_top1", "linprobe_top1"))
        assert run["steps"] >= 1 and run["summary"]["steps"] >= 1 and run["error"] is None  # not a load-bound count
        plan = run["budget_plan"]  # planned from its own measured rate (whether its drift check came before the
        assert plan["planned_at"] >= 1 and run["steps"] == plan["total_steps"]  # 1.5 s ended depends on the load)
        assert not list((smoke_dir / "runs").glob("*/*.pth"))  # checkpoints removed
    dm = results["runs"]["main-dm-seed0"]
    assert dm["num_views"] == 2 and dm["pred_ratio"] == 1.0
    profile = results["profile"]["configs"]
    assert profile["MAE"]["ms"]["vdb"] == 0.0 and profile["DMJD"]["ms"]["vdb"] > 0.0
    assert profile["DMJD"]["views_per_s"] == pytest.approx(2 * profile["DMJD"]["images_per_s"])
    report = (smoke_dir / "report.md").read_text()
    assert "`dmjd bench --testbed smoke`" in report and results["commit"] in report and "- Testbed `smoke`: " in report
    assert "| MAE | 1 | 0.75 |" in report and "## Step profile" in report and "Reading:" in report
    for png in ("main_time.png", "main_ete.png"):
        assert (smoke_dir / png).read_bytes()[:4] == b"\x89PNG"


def test_cli_parses_and_rerenders_the_report(smoke_dir, capsys):
    parser = argparse.ArgumentParser(prog="dmjd")
    register_bench_command(parser.add_subparsers(dest="command"))
    argv = ["bench", "--testbed", "gpu", "--output-dir", "x", "--sections", "main,targets", "--seeds", "0,1"]
    args = parser.parse_args(argv)
    assert (args.testbed, args.sections, args.seeds) == ("gpu", ["main", "targets"], [0, 1])
    assert parser.parse_args(["bench", "--preset", "gpu", "--output-dir", "x"]).testbed == "gpu"  # the former name
    assert parser.parse_args(["bench", "--output-dir", "x"]).testbed == "cpu"
    (smoke_dir / "report.md").unlink()
    args = parser.parse_args(["bench", "--output-dir", str(smoke_dir), "--report-only"])
    assert args.func(args) == 0
    assert "report.md" in capsys.readouterr().out and (smoke_dir / "report.md").is_file()


def test_bench_help_names_testbeds_not_presets(capsys):
    parser = argparse.ArgumentParser(prog="dmjd")
    register_bench_command(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--testbed" in text and "--preset" not in text and all(f"{name} (" in text for name in TESTBEDS)


def test_report_reads_an_output_written_before_the_testbed_rename(smoke_dir, tmp_path):
    from dmjd.bench.report import write_report

    old = json.loads((smoke_dir / "results.json").read_text())
    old["preset"] = old.pop("testbed")
    report = write_report(old, tmp_path).read_text()
    assert "- Testbed `smoke`: " in report


def test_the_report_says_where_a_run_departs_from_its_testbeds_defaults(smoke_dir):
    from dmjd.bench.report import header_lines

    results = json.loads((smoke_dir / "results.json").read_text())
    assert not any("departs" in line for line in header_lines(results))  # the testbed's own settings
    results.update(sections=["dm_block"], ete=300.0)
    line = next(line for line in header_lines(results) if "departs" in line)
    assert "sections dm_block (testbed: main" in line and "300 ETE per run (testbed: a time budget)" in line


def _as_seed(results: dict, seed: int) -> dict:
    """A copy of a one-seed benchmark output relabelled as another seed's."""
    out = json.loads(json.dumps(results))
    out["runs"] = {key.replace("seed0", f"seed{seed}"): run for key, run in out["runs"].items()}
    for comparison in out["comparisons"].values():
        for variant in comparison["variants"]:
            variant["runs"] = {str(seed): variant["runs"]["0"].replace("seed0", f"seed{seed}")}
    out["seeds"] = [seed]
    return out


def test_merge_adds_the_seeds_of_another_output(smoke_dir, tmp_path, capsys):
    from dmjd.errors import InputError

    later = tmp_path / "seed1"
    later.mkdir()
    first = json.loads((smoke_dir / "results.json").read_text())
    reworded = _as_seed(first, 1)  # the testbed's description was reworded between the two runs,
    reworded["preset"] = {**reworded.pop("testbed"), "description": "reworded", "seeds": [1]}  # under its old key
    (later / "results.json").write_text(json.dumps(reworded))
    parser = argparse.ArgumentParser(prog="dmjd")
    register_bench_command(parser.add_subparsers(dest="command"))
    merged_dir = tmp_path / "merged"
    args = parser.parse_args(["bench", "--merge", str(smoke_dir), str(later), "--output-dir", str(merged_dir)])
    assert args.func(args) == 0
    merged = json.loads((merged_dir / "results.json").read_text())
    assert merged["seeds"] == [0, 1] and len(merged["runs"]) == 2 * len(first["runs"])
    assert "preset" not in merged and merged["testbed"] == first["testbed"]
    mae = merged["comparisons"]["main"]["variants"][0]
    assert mae["runs"] == {"0": "main-mae-seed0", "1": "main-mae-seed1"}
    assert merged["analysis"]["main"]["metrics"]["knn_top1"]["MAE"]["at_time"]["n"] == 2
    assert merged["wall_s"] == pytest.approx(2 * first["wall_s"]) and len(merged["parts"]) == 2
    report = (merged_dir / "report.md").read_text()
    assert "Fine-tuning the untrained encoder (same recipe): " in report and "% (seed 0), " in report  # each part's
    other_base = {**first["testbed"], "base": [*first["testbed"]["base"], "optim.blr=1"]}
    for bad, match in (
        (first, "seed"), ({**_as_seed(first, 2), "budget_s": 1.0}, "budget_s"),
        ({**_as_seed(first, 2), "testbed": other_base}, "testbed"),
    ):  # fmt: skip
        (later / "results.json").write_text(json.dumps(bad))
        args = parser.parse_args(["bench", "--merge", str(smoke_dir), str(later), "--output-dir", str(merged_dir)])
        with pytest.raises(InputError, match=match):
            args.func(args)


def test_sections_are_checked_before_training(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark section"):
        run_efficiency("smoke", tmp_path, sections=["main", "speed"])
    assert set(SECTIONS) == {
        "main",
        "core",
        "dm",
        "dm_block",
        "jd",
        "pred_ratio",
        "targets",
        "decoder",
        "simmim",
        "maskfeat",
        "convit",
        "vis_pairing",
    }


def test_profile_split_backward_gives_the_joint_gradients(tmp_path):
    from dmjd.bench.profile import PartTimer, split_backward

    cfg = throughput_config("cpu-small", "DMJD", 6, "cpu")
    trainer = Pretrainer(cfg, tmp_path, overwrite=True)
    images, views = synthetic_images(trainer, 6), trainer.step_masks(0, 6)
    trainer.compute_losses(images, views)["loss"].backward()
    joint = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    trainer.model.zero_grad(set_to_none=True)
    timer = PartTimer(trainer.device)
    split_backward(trainer, images, views, timer)
    split = {n: p.grad for n, p in trainer.model.named_parameters() if p.grad is not None}
    assert split.keys() == joint.keys() and any(n.startswith("vdb.") for n in split)
    for name, grad in joint.items():
        torch.testing.assert_close(split[name], grad, rtol=1e-4, atol=1e-7, msg=name)
    assert all(timer.seconds[part] > 0 for part in ("targets", "encoder", "decoder", "vdb"))


def test_method_sections_are_runnable_configs():
    """The Table III pattern (each method with and without DM) and ConvMAE vs DMJD are valid configs."""
    from dmjd.config import load_config

    official, token = SECTIONS["vis_pairing"].variants  # the pairing ablation: DMJD with each pairing
    cfgs = [load_config(None, [*TESTBEDS["cpu"].base, *v.overrides]) for v in (official, token)]
    assert [c.loss.vis_pairing for c in cfgs] == ["official", "token"]
    assert cfgs[0].model_dump(exclude={"loss"}) == cfgs[1].model_dump(exclude={"loss"})
    for name in ("simmim", "maskfeat", "convit"):
        base, dm = SECTIONS[name].variants
        assert dm.label == f"{base.label} + DM" or name == "convit"
        for variant in (base, dm):
            cfg = load_config(None, [*TESTBEDS["cpu"].base, *variant.overrides])
            assert cfg.masking.num_views == (1 if variant is base else 2)


def test_benchmark_testbeds_probe_average_pooled_tokens():
    """The official DMJD code's global-pool feature (docs/fidelity.md), for every testbed."""
    assert {t.pool for t in TESTBEDS.values()} == {"avg"}
