"""Cost per ETE (issue 30): the cost model's arithmetic, and the cost benchmark end to end on a few
tiny JPEGs (its figures are timings: only their presence and consistency are checked)."""

from __future__ import annotations

import pytest

from dmjd.bench.cost import CostModel, dm_speedup, gpu_prediction, run_cost_benchmark, speedup_curve
from dmjd.bench.loader import make_jpegs

pytestmark = pytest.mark.usefixtures("one_thread")


def test_views_per_s_is_the_slower_of_compute_and_k_loaded_images():
    mae, dm = CostModel(1000.0, 100.0, 1), CostModel(1000.0, 100.0, 2)
    assert mae.views_per_s(4) == 400.0 and mae.bound(4) == "data"
    assert dm.views_per_s(4) == 800.0 and dm.bound(4) == "data"
    assert dm.views_per_s(8) == 1000.0 and dm.bound(8) == "compute"
    assert mae.views_per_s(20) == 1000.0 and mae.bound(20) == "compute"


def test_on_a_shared_cpu_the_workers_get_the_cores_the_step_leaves():
    model = CostModel(150.0, 20.0, 1)
    assert model.shared_cpu_views_per_s(2, 1) == 20.0  # one worker: one core's worth
    assert model.shared_cpu_views_per_s(2, 2) == pytest.approx(40.0 / (1 + 20.0 / 150.0))  # the step takes v/150 of a core
    assert CostModel(150.0, 500.0, 2).shared_cpu_views_per_s(2, 2) == 150.0  # compute-bound


def test_a_machines_rate_is_the_shared_model_on_a_cpu_and_the_min_model_beside_an_accelerator():
    """dmjd compare's cost split (machine_views_per_s) models a CPU as the cost benchmark does."""
    model = CostModel(150.0, 20.0, 2)
    assert model.machine_views_per_s("cpu", 2) == model.shared_cpu_views_per_s(2, 2) < model.views_per_s(2)
    assert model.machine_views_per_s("cuda", 2) == model.views_per_s(2) == 80.0


def test_dm_speedup_is_k_when_data_bound_and_one_when_compute_bound():
    mae, dm = CostModel(1000.0, 100.0, 1), CostModel(1000.0, 100.0, 2)
    assert dm_speedup(mae, dm, 2) == pytest.approx(2.0)
    assert dm_speedup(mae, dm, 7.5) == pytest.approx(1000 / 750)
    assert dm_speedup(mae, dm, 10) == pytest.approx(1.0) == dm_speedup(mae, dm, 64)
    curve = speedup_curve(mae, dm, [2, 7.5, 10])
    assert [p["dm_bound"] for p in curve] == ["data", "compute", "compute"]
    assert [p["baseline_bound"] for p in curve] == ["data", "data", "compute"]


def test_gpu_prediction_uses_each_methods_own_compute_rate():
    rates = {"MAE": 3502.0, "+DM": 3502.0, "DMJD": 3243.0}
    pred = gpu_prediction(190.0, rates, [1, 9, 32])
    assert [round(p["speedup"], 3) for p in pred["+DM"]] == [2.0, round(3420 / 1710, 3), 1.0]
    assert pred["DMJD"][-1]["speedup"] == pytest.approx(3243 / 3502)  # compute-bound: DMJD's heavier step


def test_cost_benchmark_measures_every_path_and_predicts_the_loader_path(tmp_path):
    folder = make_jpegs(tmp_path / "jpegs", 8, size=(40, 30), classes=2)
    r = run_cost_benchmark(folder, tmp_path / "work", ["vit-2x64/16"], ["MAE", "+DM"], [0], batch=2, steps=1,
                           warmup=1, img_size=32)  # fmt: skip
    assert r["loader"]["images_per_s_per_core"] > 0
    for label, k in (("vit-2x64/16 MAE", 1), ("vit-2x64/16 +DM", 2)):
        entry = r["rates"][label]
        assert entry["num_views"] == k and entry["compute"] > 0 and entry["device_path"] > 0
        cost = CostModel(entry["compute"], r["loader"]["images_per_s_per_core"], k)
        assert entry["loader_0"]["predicted"] == pytest.approx(cost.shared_cpu_views_per_s(r["cores"], 0))
        assert entry["loader_0"]["measured"] > 0 and entry["loader_0"]["bound"] in ("data", "compute")
    assert not (tmp_path / "work").exists()
