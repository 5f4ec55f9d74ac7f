"""``dmjd compare``: the efficiency benchmark on a user's folder, labelled and unlabelled, end to end in
seconds; its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dmjd.bench.analysis import difference_verdict
from dmjd.bench.compare import _paired_words, compare_setup, rankme_drop, run_compare
from dmjd.bench.environment import cpu_model
from dmjd.bench.report import machine_line, ratio
from dmjd.cli import main

CPU = 1e10


def write_images(folder: Path, n: int, seed: int, shift: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        pixels = (rng.random((16, 16, 3)) * 100 + shift).astype("uint8")
        Image.fromarray(pixels).save(folder / f"{i}.png")


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("labelled")
    for c in range(3):
        write_images(root / f"class{c}", 24, c, shift=70 * c)
    return root


@pytest.fixture(scope="module")
def flat(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("flat")
    write_images(root, 48, 7)
    return root


def test_setup_shares_one_model_and_varies_only_the_methods_keys(labelled):
    setup = compare_setup(str(labelled), 60.0, flops_per_s=CPU)
    mae, dmjd = setup.section.variants
    assert (mae.label, dmjd.label, setup.section.baseline) == ("MAE", "DMJD", "MAE")
    base_keys = {o.split("=")[0] for o in setup.testbed.base}
    assert {"model.embed_dim", "model.img_size", "optim.batch_size", "optim.blr"} <= base_keys
    for variant in (mae, dmjd):
        assert not base_keys & {o.split("=")[0] for o in variant.overrides}
    assert "masking.num_views=1" in mae.overrides and "masking.num_views=2" in dmjd.overrides
    assert setup.testbed.finetune_epochs > 0 and setup.profile.labelled


def test_compare_on_a_labelled_folder_writes_a_report_with_its_verdict(labelled, tmp_path):
    out = tmp_path / "cmp"
    results = run_compare(str(labelled), out, 1.5, seeds=(0, 1), finetune_epochs=1, flops_per_s=CPU)
    assert set(results["runs"]) == {f"compare-{m}-seed{s}" for m in ("mae", "dmjd") for s in (0, 1)}
    keys = list(results["runs"])
    assert [results["runs"][k]["label"] for k in keys] == ["MAE", "DMJD", "MAE", "DMJD"]  # alternating
    for run in results["runs"].values():
        assert parse_budget(run) == 1.5 and run["points"][0]["time"] == 0.0
        assert all(0 <= p["knn_top1"] <= 1 for p in run["points"]) and run["finetune_top1"] is not None
    assert "raw_pixels" in results["baselines"] and "untrained_finetune_top1" in results["baselines"]
    report = (out / "report.md").read_text()
    assert report.startswith("# dmjd compare") and f"**Verdict:** {results['verdict']}" in report
    assert "MAE's final kNN" in results["verdict"] and "fine-tuning" in results["verdict"]
    assert "model.img_size=32" in report and (out / "compare_time.png").read_bytes()[:4] == b"\x89PNG"
    assert "re-plans once at the end of the warmup when its rate drifted by more than 5 % (" in report
    assert report.count(cpu_model()) == 1  # the machine line names the CPU once
    saved = json.loads((out / "results.json").read_text())
    assert saved["verdict"] == results["verdict"] and saved["data_profile"]["num_classes"] == 3


def parse_budget(run: dict) -> float:
    return float(next(o for o in run["overrides"] if o.startswith("train.budget=")).split("=")[1])


def test_compare_on_an_unlabelled_folder_uses_label_free_measures(flat, tmp_path):
    out = tmp_path / "cmp"
    results = run_compare(str(flat), out, 1.5, seeds=(0, 1), flops_per_s=CPU)
    assert results["metrics"] == {"rankme": "RankMe"} and results["testbed"]["finetune_epochs"] == 0
    for run in results["runs"].values():
        assert all(p["rankme"] >= 1.0 for p in run["points"])
        assert any(key.endswith("/loss_mim") for key in run["heldout"])
    report = (out / "report.md").read_text()
    assert "No probe was possible" in report and "RankMe at equal time" in results["verdict"]
    assert "knn" not in results["verdict"].lower()
    assert "| loss on the training images at the end |" in report and "held-out" not in report  # no val/ here
    assert report.count(cpu_model()) == 1


@pytest.mark.parametrize(
    ("mean", "low", "high", "words"),
    [
        (-3.6, -8.3, 1.0, "lower, not resolved"),
        (1.1, -0.4, 2.6, "higher, not resolved"),
        (2.0, 0.5, 3.5, "higher (resolved)"),
        (-2.0, -3.0, -0.2, "lower (resolved)"),
        (0.0, -1.0, 1.0, "level, not resolved"),
    ],
)
def test_verdict_words_follow_the_sign_and_the_confidence_interval(mean, low, high, words):
    assert difference_verdict({"mean": mean, "std": 1.0, "n": 3, "ci_low": low, "ci_high": high}) == words


def test_a_paired_difference_reads_its_sign_and_ci_in_the_verdict():
    table = {"MAE": {"at_time_by_seed": {"0": 17.0, "1": 16.0, "2": 18.0}},
             "DMJD": {"at_time_by_seed": {"0": 10.0, "1": 17.0, "2": 13.0}}}  # fmt: skip
    words = _paired_words(table, "MAE", "DMJD", "DMJD - MAE RankMe at equal time", 1)
    assert words.startswith("DMJD - MAE RankMe at equal time -3.7 [") and words.endswith("]: lower, not resolved")


def test_a_rankme_that_training_lowered_is_said_in_a_sentence():
    def entry(start, end):
        return {"start": {"mean": start, "std": None}, "at_time": {"mean": end, "std": None}}

    fell = rankme_drop({"MAE": entry(17.3, 9.9), "DMJD": entry(17.3, 6.3)})
    assert fell.startswith("Training lowered RankMe below the untrained encoder's (MAE 17.3 -> 9.9; DMJD 17.3 -> 6.3)")
    assert rankme_drop({"MAE": entry(17.3, 9.9), "DMJD": entry(17.3, 18.0)}).count("->") == 1
    assert rankme_drop({"MAE": entry(9.0, 12.0)}) == ""


def test_machine_line_names_the_cpu_once_and_an_undefined_speedup_says_why():
    cpu = {"device": "CPU: AMD EPYC", "cpu": "AMD EPYC", "cpu_count": 2, "torch_threads": 2}
    assert machine_line(cpu) == "CPU AMD EPYC (2 cores, 2 torch threads)"
    assert machine_line({**cpu, "device": "NVIDIA H100"}) == "NVIDIA H100; CPU AMD EPYC (2 cores, 2 torch threads)"
    assert ratio({"mean": None, "total": 3}, reached=3) == "undefined (reached before any training)"
    assert ratio({"mean": None, "total": 3}, reached=0) == "not reached (0/3)"
    wide = {"mean": 4.7, "ci_low": 7e-19, "ci_high": 3.0e16, "n": 2, "total": 3}  # two seeds: t = 12.7
    assert ratio(wide) == "4.70x [<0.01, >100] (2/3)"
    assert ratio({"mean": 1.5, "ci_low": 1.2, "ci_high": 1.9, "n": 3, "total": 3}) == "1.50x [1.20, 1.90]"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "soon"], "--budget"),
        (["--budget", "1m", "--methods", "mae,simclr"], "--methods"),
        (["--budget", "1m", "--methods", "dmjd"], "--methods"),
    ],
)
def test_bad_options_are_one_line_errors(labelled, tmp_path, capsys, args, message):
    assert main(["compare", str(labelled), "--output-dir", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "o" / "results.json").exists()


def test_data_it_cannot_use_is_refused_in_one_line(flat, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    tiny = tmp_path / "tiny"
    write_images(tiny, 10, 1)
    cases = [
        ([str(empty), "--budget", "1m"], "no images"),
        ([str(tiny), "--budget", "1m"], "fewer than a batch"),  # 10 images: not two batches of 8
        ([str(flat), "--budget", "1m", "--finetune-epochs", "3"], "no labels"),
    ]
    for args, message in cases:
        assert main(["compare", *args, "--output-dir", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_results_of_something_else_are_not_written_over(tmp_path, capsys, labelled):
    """A folder whose results.json is not a comparison's (tests/test_compare_resume.py: one of other
    settings; the same comparison continues)."""
    out = tmp_path / "o"
    out.mkdir()
    (out / "results.json").write_text("{}")
    assert main(["compare", str(labelled), "--budget", "1m", "--output-dir", str(out)]) == 2
    assert "holds results of another command or an older dmjd" in capsys.readouterr().err
    assert (out / "results.json").read_text() == "{}"


def test_pretrain_refuses_a_budget_shorter_than_one_step(tmp_path, capsys):
    code = main(["pretrain", "--config", "demo", "--output-dir", str(tmp_path / "r"), "train.budget=0.001s",
                 "data.limit=256", "train.progress=false"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "shorter than one training step" in err[0]


@pytest.mark.slow
def test_compare_from_published_weights_has_the_starting_encoder_as_a_baseline(labelled, tmp_path):
    """``dmjd compare DATA --init SOURCE``: continued MAE against continued DMJD from the same start, the
    starting encoder beside an untrained one of its architecture and raw pixels."""
    import timm
    from safetensors.torch import save_file

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    start = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=16, patch_size=4,
                              depth=2, embed_dim=64, num_heads=1)  # fmt: skip
    save_file(start.state_dict(), str(tmp_path / "start.safetensors"))
    out = tmp_path / "cmp"
    run_compare(str(labelled), out, 10.0, seeds=(0, 1), finetune_epochs=1, flops_per_s=CPU,
                init=str(tmp_path / "start.safetensors"))  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    base = results["baselines"]
    assert base["init"] == str(tmp_path / "start.safetensors") and "knn_top1" in base["untrained"]
    assert base["start_finetune_top1"] is not None and base["untrained_finetune_top1"] is not None
    for run in results["runs"].values():
        assert f"model.init={tmp_path / 'start.safetensors'}" in run["overrides"]
    report = (out / "report.md").read_text()
    assert "Starting encoder (model.init=" in report and "Untrained encoder of the same architecture" in report
    assert "Fine-tuning the starting encoder" in report and "Raw pixels" in report
