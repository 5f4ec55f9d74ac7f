"""The efficiency benchmark: the paper's configurations pre-trained side by side on one machine.

Protocol (issue 4, paper Tables II-VI and Fig. 6):

* Every run uses the same model, data, augmentation, batch, base learning rate and seed; only the
  variant's overrides (views, prediction rate, target, branches) differ.
* Every run gets the same training wall-clock budget (``train.budget``; evaluation time is not
  counted) and records its effective training epochs (ETE = K x epochs).
* Schedule rule: the engine's time budget (``dmjd.engine.budget``), the same for every configuration:
  each run measures its own step rate over its first steps, plans warmup + cosine to end at the
  budget, and re-plans once early on when its rate drifts by more than ``BUDGET_TOLERANCE``. A short
  discarded run first warms up the process, so that one-off costs (lazy kernel loading, allocator
  growth) do not fall on the first configuration.
* The encoder is evaluated (weighted kNN and the fast logistic-regression linear probe on frozen
  features of the labelled splits) before training and every few optimizer steps (the same number of
  evaluations per run, mid-epoch if need be), always at the end.
* The analysis (``dmjd.bench.analysis``) reads accuracy at equal wall time (the budget), at equal
  ETE (the largest ETE every run of the comparison reached) and the speed-up over the baseline.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from dmjd.bench.analysis import Curve, aggregate, aggregate_ratios, common_end, speedup, value_at
from dmjd.bench.environment import git_commit, machine_info, now_utc, release_device_memory, thread_limit
from dmjd.bench.testbeds import SECTION_NAMES, SECTIONS, TESTBEDS, Section, Testbed, Variant
from dmjd.config import Config, load_config
from dmjd.engine import NonFiniteLossError, Pretrainer
from dmjd.engine.metrics import read_metrics
from dmjd.engine.runtime import resolve_device
from dmjd.eval.monitor import OnlineMonitor

METRICS = {"linprobe_top1": "linear probe", "knn_top1": "kNN"}
BUDGET_TOLERANCE = 0.05  # benchmark runs re-plan on a 5 % drift of their rate (pretrain's default: 20 %)
SCHEDULE_RULE = (
    "train.budget={budget_s:g}s for every run (dmjd.engine.budget): the run measures its steps/s over its first "
    "steps, plans warmup ({warmup:g} of the steps) + cosine to end at the budget, re-plans once at the end of the "
    "warmup when its rate drifted by more than {tolerance:g}, and stops at the budget; a discarded {calibrate_s:g} s "
    "run warms up the process first; evaluation before training, every ceil(planned steps / {eval_points}) optimizer "
    "steps (mid-epoch if need be) and at the end"
)

Monitor = Callable[[nn.Module], dict[str, float]]


def eval_interval(steps: int, points: int) -> int:
    """Optimizer steps between evaluations so that a run of ``steps`` has about ``points`` of them."""
    return max(1, math.ceil(steps / max(points, 1)))


class PeriodicEvaluator:
    """The trainer's hooks for the benchmark's evaluations: before training, every ``every_steps``
    optimizer steps (mid-epoch if need be; None: at every epoch end instead) and when the run ends,
    at most once per step.

    Spacing them in steps gives a run of under two epochs (DMJD on a CPU) as many points on its
    curve as a longer one, so that its time to an accuracy is not read off a single evaluation.

    Args:
        monitor: ``monitor(encoder) -> {"knn_top1": ..., "linprobe_top1": ...}``.
        every_steps: optimizer steps between evaluations, or None for every epoch.
        points: instead of ``every_steps``, about this many evaluations over a budgeted run: the
            interval is set from its plan once it exists.
    """

    def __init__(self, monitor: Monitor, every_steps: int | None = None, points: int | None = None) -> None:
        self.monitor, self.every_steps, self.points = monitor, every_steps, points
        self._last_step: int | None = None

    def evaluate(self, encoder: nn.Module) -> dict[str, float]:
        """The monitor's accuracies plus ``eval_s``, the seconds the evaluation took."""
        start = time.perf_counter()
        result = dict(self.monitor(encoder))
        result["eval_s"] = time.perf_counter() - start
        return result

    def _at(self, trainer: Pretrainer, due: bool) -> dict[str, float] | None:
        step = trainer.state.opt_step
        if not due or step == self._last_step:
            return None
        self._last_step = step
        return self.evaluate(trainer.model.encoder)

    def on_epoch_end(self, trainer: Pretrainer) -> dict[str, float] | None:
        """Before training, at the end of the run and, without ``every_steps``, after every epoch."""
        due = trainer.state.opt_step == 0 or self.every_steps is None or trainer.time_up or trainer.finished
        return self._at(trainer, due)

    def on_step_end(self, trainer: Pretrainer) -> dict[str, float] | None:
        """Every ``every_steps`` optimizer steps; the last step is left to ``on_epoch_end``, which
        follows it, so that the final evaluation carries the epoch count of a finished epoch."""
        plan = trainer.budget.plan if trainer.budget is not None else None
        if self.points is not None and self.every_steps is None and plan is not None:
            self.every_steps = eval_interval(plan.total_steps, self.points)
        every = self.every_steps
        return self._at(trainer, every is not None and trainer.state.opt_step % every == 0 and not trainer.finished)


def run_overrides(
    testbed: Testbed, variant: Variant, seed: int, budget_s: float, data_path: str | None, device: str | None
) -> list[str]:
    """The config overrides of one run: testbed base < variant < seed, budget, data path, device."""
    overrides = [*testbed.base, *variant.overrides, f"train.seed={seed}", f"train.budget={budget_s:g}",
                 f"train.budget_warmup={testbed.warmup_fraction:g}", f"train.budget_tolerance={BUDGET_TOLERANCE:g}"]  # fmt: skip
    if data_path:
        overrides.append(f"data.path={data_path}")
    if device:
        overrides.append(f"train.device={device}")
    return overrides


def config_identity(cfg: Config, with_seed: bool = True) -> str:
    """A canonical string of a resolved config: equal strings train identically."""
    data = cfg.model_dump(mode="json")
    if not with_seed:
        data["train"].pop("seed")
    return json.dumps(data, sort_keys=True)


def slug(text: str) -> str:
    """A folder-name form of a label (``+DM`` -> ``dm``, ``depth 2, no VDB`` -> ``depth-2-no-vdb``)."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "run"


def warm_up_process(cfg: Config, seconds: float, workdir: Path) -> None:
    """Train ``cfg`` for ``seconds`` and throw the run away: the process's one-off costs (lazy kernel
    loading, allocator growth, library initialisation) are paid before the first measured run."""
    probe = cfg.model_copy(deep=True)
    probe.train.budget, probe.train.budget_plan, probe.optim.epochs = None, None, 1_000_000
    probe.train.max_time_s = seconds
    try:
        Pretrainer(probe, workdir, overwrite=True).fit()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        release_device_memory()


class EndOfRunFinetune:
    """Fine-tunes a run's final encoder on the monitor's cached labelled splits
    (``dmjd.eval.quick_finetune``) and returns the test top-1; None when the splits are not cached."""

    def __init__(self, monitor: Monitor, epochs: int) -> None:
        self.monitor, self.epochs = monitor, epochs

    def __call__(self, encoder: nn.Module, amp_dtype: torch.dtype | None, seed: int) -> float | None:
        cache = getattr(self.monitor, "cache", None)
        if not self.epochs or cache is None:
            return None
        from dmjd.eval.quick_finetune import quick_finetune_top1

        train, test = cache
        monitor = cast(OnlineMonitor, self.monitor)  # the monitor that caches labelled splits
        return quick_finetune_top1(encoder, train, test, monitor.normalize, epochs=self.epochs,
                                   pool=monitor.pool, amp_dtype=amp_dtype, seed=seed)  # fmt: skip


def train_run(
    cfg: Config, run_dir: Path, evaluator: PeriodicEvaluator, finetune: EndOfRunFinetune | None = None
) -> dict[str, Any]:
    """Pre-train one configuration with evaluations; returns its summary, evaluation points and budget
    plan, and the end-of-run fine-tuning accuracy when ``finetune`` is given.

    The folder keeps ``metrics.jsonl``, ``config.yaml`` and ``summary.json``; checkpoints are
    deleted. A run stopped by non-finite losses is reported with its error and the points it made.
    """
    trainer = Pretrainer(cfg, run_dir, overwrite=True)
    error = None
    try:
        summary = trainer.fit(on_epoch_end=evaluator.on_epoch_end, on_step_end=evaluator.on_step_end)
    except NonFiniteLossError as err:
        error = str(err)
        summary = {"epochs": trainer.state.epoch, "steps": trainer.state.opt_step, "stopped_by": "non-finite loss"}
    finally:
        for checkpoint in run_dir.glob("*.pth"):
            checkpoint.unlink()
    evals = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("kind") == "eval"]
    points = [{k: v for k, v in r.items() if k not in ("kind", "step", "mid_epoch")} for r in evals]  # 1st: untrained
    record = {
        "summary": summary,
        "points": points,
        "steps_per_epoch": trainer.steps_per_epoch,
        "num_views": trainer.masking.num_views,
        "pred_ratio": trainer.masking.num_predicted / (trainer.masking.grid_size[0] * trainer.masking.grid_size[1]),
        "peak_lr": trainer.peak_lr,
        "error": error,
    }
    plan = trainer.budget.plan if trainer.budget is not None else None
    done = trainer.state.opt_step  # a run whose budget ended before its plan was made: what it trained
    record.update(budget_plan=plan.model_dump() if plan is not None else None,
                  steps=plan.total_steps if plan is not None else done,
                  epochs=(plan.total_steps if plan is not None else done) / trainer.steps_per_epoch,
                  warmup_epochs=trainer.warmup_steps / trainer.steps_per_epoch, eval_every_steps=evaluator.every_steps)  # fmt: skip
    if hasattr(evaluator.monitor, "heldout"):  # label-free: the run's own loss on the evaluation images
        record["heldout"] = evaluator.monitor.heldout(trainer.model, trainer.target, trainer.masking, trainer.loss_fn)
    if finetune is not None:
        start = time.perf_counter()
        record["finetune_top1"] = finetune(trainer.model.encoder, trainer.amp_dtype, cfg.train.seed)
        record["finetune_s"] = time.perf_counter() - start
    del trainer
    release_device_memory()
    return record


@dataclass
class PlannedRun:
    """One training run of the benchmark, shared by every comparison that needs its config."""

    key: str
    label: str
    seed: int
    overrides: list[str]
    cfg: Config


def plan_runs(
    testbed: Testbed,
    sections: Sequence[str | Section],
    seeds: Sequence[int],
    budget_s: float,
    data_path: str | None,
    device: str | None,
) -> tuple[list[PlannedRun], dict[str, dict[str, Any]]]:
    """The distinct runs of the requested comparisons, and each comparison's map to them.

    Runs are ordered comparison by comparison, seed by seed, so that the configurations of a
    comparison run interleaved (any drift of the machine affects them alike). A configuration
    that two comparisons share (e.g. MAE in ``main`` and ``pred_ratio``) trains once per seed.

    Args:
        sections: names in ``SECTIONS``, or ``Section`` objects (``dmjd compare``'s, made for the data).

    Returns:
        ``(runs, comparisons)`` where ``comparisons[section]["variants"]`` lists
        ``{"label", "runs": {seed: run key}}`` and ``comparisons[section]["section"]`` is the
        ``Section`` as a dict (so a report can be rewritten from the results alone).
    """
    runs: list[PlannedRun] = []
    by_identity: dict[str, PlannedRun] = {}
    comparisons: dict[str, dict[str, Any]] = {}
    for item in sections:
        section = SECTIONS[item] if isinstance(item, str) else item
        name = section.name
        entry: dict[str, Any] = {"title": section.title, "baseline": section.baseline, "section": asdict(section),
                 "variants": [{"label": v.label, "runs": {}} for v in section.variants]}  # fmt: skip
        for seed in seeds:
            for variant, slot in zip(section.variants, entry["variants"]):
                overrides = run_overrides(testbed, variant, seed, budget_s, data_path, device)
                cfg = load_config(None, overrides)
                identity = config_identity(cfg)
                if identity not in by_identity:
                    run = PlannedRun(f"{name}-{slug(variant.label)}-seed{seed}", variant.label, seed, overrides, cfg)
                    by_identity[identity] = run
                    runs.append(run)
                slot["runs"][str(seed)] = by_identity[identity].key
        comparisons[name] = entry
    return runs, comparisons


def build_monitor(cfg: Config, eval_images: int | None, pool: str | None = None) -> OnlineMonitor:
    """The kNN + linear-probe evaluator on the labelled splits of the runs' data set."""
    monitor = OnlineMonitor.from_config(cfg, max_images=eval_images, device=resolve_device(cfg.train.device))
    monitor.pool = pool  # type: ignore[assignment]
    return monitor


def baselines(cfg: Config, monitor: Monitor, finetune: EndOfRunFinetune) -> dict[str, Any]:
    """What pre-training must beat: the probes on raw pixels, and fine-tuning from the untrained
    encoder (the first run's initialisation) with the same recipe."""
    out: dict[str, Any] = {}
    if hasattr(monitor, "raw_pixels"):
        out["raw_pixels"] = monitor.raw_pixels()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Pretrainer(cfg, tmp, overwrite=True)
        out["untrained_finetune_top1"] = finetune(trainer.model.encoder, trainer.amp_dtype, cfg.train.seed)
        del trainer
    release_device_memory()
    return out


def run_efficiency(
    testbed: Testbed | str,
    output_dir: str | Path,
    sections: Sequence[str | Section] | None = None,
    seeds: Sequence[int] | None = None,
    budget_s: float | None = None,
    data_path: str | None = None,
    device: str | None = None,
    command: str = "",
    monitor: Monitor | None = None,
    metrics: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run the benchmark and write ``results.json``, ``report.md`` and the convergence figures.

    Args:
        testbed: a ``Testbed`` or the name of one in ``TESTBEDS``.
        output_dir: receives ``runs/<run>/``, ``results.json`` (rewritten after every run, so an
            interrupted benchmark keeps what it measured), ``report.md`` and PNG figures.
        sections: comparisons to run, from ``main, pred_ratio, targets, decoder, profile``
            (default: the testbed's).
        seeds: default: the testbed's.
        budget_s: training seconds per run (default: the testbed's).
        data_path: ``data.path`` of every run (e.g. a folder with Fashion-MNIST's ``*-ubyte.gz``).
        device: ``train.device`` of every run (default: the testbed's).
        command: the command line, for the report.
        monitor: evaluator replacing the default ``OnlineMonitor`` (tests; ``dmjd compare``'s label-free one).
        metrics: the monitor's measures to analyse, ``{key: name}`` (default: ``METRICS``, the probes').

    Returns:
        The results dict written to ``results.json`` (with its ``analysis``).

    Raises:
        ValueError: unknown testbed or section.
    """
    from dmjd.bench.profile import profile_configs
    from dmjd.bench.report import write_report

    started = time.perf_counter()
    testbed = TESTBEDS[testbed] if isinstance(testbed, str) else testbed
    sections = tuple(sections or testbed.sections)
    unknown = [s for s in sections if isinstance(s, str) and s not in SECTION_NAMES]
    if unknown:
        raise ValueError(f"unknown benchmark section(s) {', '.join(unknown)}; choose from {', '.join(SECTION_NAMES)}")
    seeds = tuple(seeds if seeds is not None else testbed.seeds)
    budget = float(budget_s or testbed.budget_s)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs, comparisons = plan_runs(testbed, [s for s in sections if s != "profile"], seeds, budget, data_path, device)
    profiled = {
        v.label: load_config(None, run_overrides(testbed, v, seeds[0], budget, data_path, device))
        for v in (SECTIONS["main"].variants[0], SECTIONS["main"].variants[-1])  # MAE and DMJD
    } if "profile" in sections else {}  # fmt: skip
    first = runs[0].cfg if runs else next(iter(profiled.values()), None)
    with thread_limit(testbed.threads):
        results: dict[str, Any] = {
            "benchmark": "dmjd efficiency",
            "command": command,
            "date": now_utc(),
            "commit": git_commit(),
            "machine": machine_info(resolve_device(first.train.device if first is not None else "auto")),
            "testbed": asdict(testbed),
            "sections": [s if isinstance(s, str) else s.name for s in sections],
            "metrics": metrics or METRICS,
            "seeds": list(seeds),
            "budget_s": budget,
            "data_path": data_path,
            "schedule_rule": SCHEDULE_RULE.format(
                calibrate_s=testbed.calibrate_s,
                warmup=testbed.warmup_fraction,
                budget_s=budget,
                tolerance=BUDGET_TOLERANCE,
                eval_points=testbed.eval_points,
            ),
            "comparisons": comparisons,
            "runs": {},
        }
        if runs:
            monitor = monitor or build_monitor(runs[0].cfg, testbed.eval_images, testbed.pool)
            finetune = EndOfRunFinetune(monitor, testbed.finetune_epochs)
            results["evaluation"] = {
                "images_per_split": testbed.eval_images,
                "knn_k": getattr(monitor, "k", None),
                "pool": getattr(monitor, "pool", None),
                "finetune_epochs": testbed.finetune_epochs,
            }
            results["baselines"] = baselines(runs[0].cfg, monitor, finetune)
            _train_all(runs, testbed, budget, monitor, finetune, out, results)
        if "profile" in sections:
            work = out / "profile-work"
            results["profile"] = profile_configs(profiled, work, testbed.profile_steps, testbed.profile_warmup)
    results["wall_s"] = time.perf_counter() - started
    results["analysis"] = analyse(results)
    write_json(results, out / "results.json")
    if set(METRICS) <= set(results["metrics"]):  # the probes' report; a label-free caller writes its own
        write_report(results, out)
    return results


def _train_all(
    runs: list[PlannedRun], testbed: Testbed, budget: float, monitor: Monitor, finetune: EndOfRunFinetune,
    out: Path, results: dict[str, Any],
) -> None:  # fmt: skip
    """Warm the process up, then train every run on its budget; save the results after each."""
    if runs:
        warm_up_process(runs[0].cfg, testbed.calibrate_s, out / "warm-up")
    for i, run in enumerate(runs, 1):
        print(f"bench: [{i}/{len(runs)}] {run.label} seed {run.seed}: {budget:g} s budget, about "
              f"{testbed.eval_points} evaluations", flush=True)  # fmt: skip
        record = train_run(run.cfg, out / "runs" / run.key, PeriodicEvaluator(monitor, points=testbed.eval_points), finetune)
        results["runs"][run.key] = {"label": run.label, "seed": run.seed, "overrides": run.overrides, **record}
        write_json(results, out / "results.json")


def write_json(data: dict[str, Any], path: Path) -> None:
    """Write ``data`` to ``path`` as indented JSON, atomically (a temporary file then a rename)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


# ----------------------------------------------------------------------------------- analysis
def _curves(results: dict[str, Any], keys: dict[str, str], x: str, metric: str) -> dict[str, Curve]:
    """Per seed, the curve of ``metric`` against ``x`` of the runs named in ``keys`` (seed -> run)."""
    out = {}
    for seed, key in keys.items():
        run = results["runs"].get(key)
        if run is not None:
            curve_points = [p for p in run["points"] if p.get(metric) is not None]
            if curve_points:
                out[seed] = Curve.from_points(curve_points, x, metric)
    return out


def analyse_comparison(results: dict[str, Any], name: str) -> dict[str, Any]:
    """Accuracy at equal time and ETE, and speed-ups over the baseline, per variant and metric.

    Returns:
        ``{"equal_time_s", "equal_ete", "metrics": {metric: {label: {...}}}, "runs": {label: {...}}}``
        where each variant's entry holds ``at_time``, ``at_ete``, ``start`` (before training),
        ``final``, ``speedup``, ``ete_speedup`` (each ``Stats`` as a dict), ``level``,
        ``time_to_level`` and ``ete_to_level`` per seed, and ``reached`` (seeds that reached the
        baseline's final accuracy).
    """
    comparison = results["comparisons"][name]
    budget = results["budget_s"]
    variants = comparison["variants"]
    baseline = next(v for v in variants if v["label"] == comparison["baseline"])
    names = list(results.get("metrics", METRICS))
    all_ete = [c for v in variants for c in _curves(results, v["runs"], "ete", names[0]).values()]
    equal_ete = common_end(all_ete) if all_ete else 0.0
    metrics: dict[str, dict[str, Any]] = {}
    for metric in names:
        base_time = _curves(results, baseline["runs"], "time", metric)
        base_ete = _curves(results, baseline["runs"], "ete", metric)
        table = {}
        for v in variants:
            time_curves = _curves(results, v["runs"], "time", metric)
            ete_curves = _curves(results, v["runs"], "ete", metric)
            seeds = [s for s in time_curves if s in base_time]
            speeds = {s: speedup(base_time[s], time_curves[s]) for s in seeds}
            ete_speeds = {s: speedup(base_ete[s], ete_curves[s]) for s in seeds}
            table[v["label"]] = {
                "at_time": asdict(aggregate([value_at(c, budget) for c in time_curves.values()])),
                "at_time_by_seed": {s: value_at(c, budget) for s, c in time_curves.items()},
                "at_ete": asdict(aggregate([value_at(c, equal_ete) for c in ete_curves.values()])),
                "start": asdict(aggregate([c.y[0] for c in time_curves.values()])),
                "final": asdict(aggregate([c.final for c in time_curves.values()])),
                "speedup": asdict(aggregate_ratios([speeds[s].ratio for s in seeds])),
                "ete_speedup": asdict(aggregate_ratios([ete_speeds[s].ratio for s in seeds])),
                "level": {s: speeds[s].level for s in seeds},
                "time_to_level": {s: speeds[s].variant_x for s in seeds},
                "ete_to_level": {s: ete_speeds[s].variant_x for s in seeds},
                "reached": sum(speeds[s].variant_x is not None for s in seeds),
                "seeds": len(seeds),
            }
        metrics[metric] = table
    runs_info = {}
    for v in variants:
        rs = [results["runs"][k] for k in v["runs"].values() if k in results["runs"]]
        runs_info[v["label"]] = {
            "epochs": asdict(aggregate([r["summary"].get("epochs") for r in rs])),
            "scheduled_epochs": asdict(aggregate([r["epochs"] for r in rs])),
            "ete": asdict(aggregate([r["points"][-1]["ete"] for r in rs])),
            "time_s": asdict(aggregate([r["summary"].get("time_s") for r in rs])),
            "eval_s": asdict(aggregate([sum(p.get("eval_s", 0.0) for p in r["points"]) for r in rs])),
            "num_views": rs[0]["num_views"] if rs else None,
            "pred_ratio": rs[0]["pred_ratio"] if rs else None,
            "peak_lr": rs[0]["peak_lr"] if rs else None,
            "errors": [r["error"] for r in rs if r.get("error")],
            "finetune": asdict(aggregate([r.get("finetune_top1") for r in rs])),
            "finetune_by_seed": {
                s: results["runs"][k].get("finetune_top1") for s, k in v["runs"].items() if k in results["runs"]
            },
        }
    return {"equal_time_s": budget, "equal_ete": equal_ete, "metrics": metrics, "runs": runs_info}


def analyse(results: dict[str, Any]) -> dict[str, Any]:
    """The analysis of every comparison that has runs."""
    return {name: analyse_comparison(results, name) for name in results["comparisons"]}
