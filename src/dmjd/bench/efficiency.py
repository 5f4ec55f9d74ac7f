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
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

from dmjd.bench.analysis import aggregate, aggregate_ratios, common_end, runs_info, seed_curves, speedup, value_at
from dmjd.bench.environment import git_commit, machine_info, now_utc, release_device_memory, thread_limit
from dmjd.bench.equal_ete import analyse_equal_ete
from dmjd.bench.evaluators import (
    EndOfRunFinetune,
    EteEvaluator,
    Monitor,
    PeriodicEvaluator,
    ete_grid,
)
from dmjd.bench.testbeds import SECTION_NAMES, SECTIONS, TESTBEDS, Section, Testbed, Variant
from dmjd.config import Config, load_config
from dmjd.engine import NonFiniteLossError, Pretrainer
from dmjd.engine.metrics import read_metrics
from dmjd.engine.runtime import resolve_device
from dmjd.errors import InputError
from dmjd.eval.monitor import OnlineMonitor
from dmjd.io import checkpoint as ckpt

METRICS = {"linprobe_top1": "linear probe", "knn_top1": "kNN"}
BUDGET_TOLERANCE = 0.05  # benchmark runs re-plan on a 5 % drift of their rate (pretrain's default: 20 %)
SCHEDULE_RULE = (
    "train.budget={budget_s:g}s for every run (dmjd.engine.budget): the run measures its steps/s over its first "
    "steps, plans warmup ({warmup:g} of the steps) + cosine to end at the budget, re-plans once at the end of the "
    "warmup when its rate drifted by more than {tolerance_pct:g} % (train.budget_tolerance; dmjd pretrain's default is "
    "20 %), and stops at the budget; a discarded {calibrate_s:g} s "
    "run warms up the process first; evaluation before training, every ceil(planned steps / {eval_points}) optimizer "
    "steps (mid-epoch if need be) and at the end"
)
ETE_RULE = (
    "every run trains exactly {ete:g} effective training epochs (optim.epochs = ETE / K): warmup ({warmup:g} of its "
    "epochs) + cosine ending at {ete:g} ETE; evaluation before training, at the first step reaching ETE {grid}, and at "
    "the end. No figure depends on time, so a run gives the same figures on a busy or an idle machine"
)


def run_overrides(
    testbed: Testbed, variant: Variant, seed: int, budget_s: float | None, data_path: str | None, device: str | None
) -> list[str]:
    """The config overrides of one run: testbed base < variant < seed, budget (None: a fixed-ETE run,
    whose epochs ``ete_overrides`` adds), data path, device."""
    overrides = [*testbed.base, *variant.overrides, f"train.seed={seed}"]
    if budget_s is not None:
        overrides += [f"train.budget={budget_s:g}", f"train.budget_warmup={testbed.warmup_fraction:g}",
                      f"train.budget_tolerance={BUDGET_TOLERANCE:g}"]  # fmt: skip
    if data_path:
        overrides.append(f"data.path={data_path}")
    if device:
        overrides.append(f"train.device={device}")
    return overrides


def ete_overrides(cfg: Config, ete: float, warmup_fraction: float, label: str) -> list[str]:
    """The epochs of a run that trains exactly ``ete`` effective epochs (ETE = K x epochs), with
    ``warmup_fraction`` of them warmup and the cosine ending at ``ete``.

    Raises:
        InputError: ``ete`` is not a whole number of epochs of this configuration's K views.
    """
    views = cfg.masking.num_views
    epochs = ete / views
    if abs(epochs - round(epochs)) > 1e-9 or round(epochs) < 1:
        raise InputError(f"--ete {ete:g} is not a whole number of epochs for {label} (K = {views} views per image)")
    return [f"optim.epochs={round(epochs)}", "optim.max_steps=null", f"optim.warmup_epochs={warmup_fraction * epochs:g}"]


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


def train_run(
    cfg: Config,
    run_dir: Path,
    evaluator: PeriodicEvaluator,
    finetune: EndOfRunFinetune | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Pre-train one configuration with evaluations; returns its summary, evaluation points and budget
    plan, and the end-of-run fine-tuning accuracy when ``finetune`` is given.

    With ``resume``, a run whose folder holds ``checkpoint-last.pth`` continues from it exactly (the
    engine's resume: its evaluations so far stay in ``metrics.jsonl``) and the checkpoints are kept
    for the caller to delete once the result is saved; otherwise the run starts afresh and its
    checkpoints are deleted at its end. The folder keeps ``metrics.jsonl``, ``config.yaml`` and
    ``summary.json``. A run stopped by non-finite losses is reported with its error and the points it made.
    """
    if resume and (run_dir / ckpt.LAST).is_file():
        trainer = Pretrainer(cfg, run_dir, resume=run_dir / ckpt.LAST)
    else:
        trainer = Pretrainer(cfg, run_dir, overwrite=True)
    error = None
    try:
        summary = trainer.fit(on_epoch_end=evaluator.on_epoch_end, on_step_end=evaluator.on_step_end)
    except NonFiniteLossError as err:
        error = str(err)
        summary = {"epochs": trainer.state.epoch, "steps": trainer.state.opt_step, "stopped_by": "non-finite loss"}
    finally:
        if not resume:
            delete_checkpoints(run_dir)
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


def delete_checkpoints(run_dir: Path) -> None:
    """Delete a benchmark run's checkpoints (its result is saved; they would only fill the disk)."""
    for checkpoint in run_dir.glob("*.pth"):
        checkpoint.unlink()


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
    budget_s: float | None,
    data_path: str | None,
    device: str | None,
    ete: float | None = None,
) -> tuple[list[PlannedRun], dict[str, dict[str, Any]]]:
    """The distinct runs of the requested comparisons, and each comparison's map to them.

    Runs are ordered comparison by comparison, seed by seed, so that the configurations of a
    comparison run interleaved (any drift of the machine affects them alike). A configuration
    that two comparisons share (e.g. MAE in ``main`` and ``pred_ratio``) trains once per seed.

    Args:
        sections: names in ``SECTIONS``, or ``Section`` objects (``dmjd compare``'s, made for the data).
        budget_s: training seconds per run, or None with ``ete``: every run trains ``ete`` effective epochs.

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
                if ete is not None:
                    overrides += ete_overrides(load_config(None, overrides), ete, testbed.warmup_fraction, variant.label)
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
    encoder (the first run's initialisation) with the same recipe.

    Runs that start from ``model.init`` also get the starting encoder fine-tuned
    (``start_finetune_top1``) and an untrained encoder of its architecture probed and fine-tuned
    (``untrained``, ``untrained_finetune_top1``); ``init`` names the source.
    """
    out: dict[str, Any] = {}
    if hasattr(monitor, "raw_pixels"):
        out["raw_pixels"] = monitor.raw_pixels()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Pretrainer(cfg, Path(tmp) / "first", overwrite=True)
        first = finetune(trainer.model.encoder, trainer.amp_dtype, cfg.train.seed)
        if cfg.model.init is None:
            out["untrained_finetune_top1"] = first
        else:
            out |= {"init": cfg.model.init, "start_finetune_top1": first}
            untrained = trainer.cfg.model_copy(update={"model": trainer.cfg.model.model_copy(update={"init": None})})
            del trainer
            trainer = Pretrainer(untrained, Path(tmp) / "untrained", overwrite=True)
            out["untrained"] = dict(monitor(trainer.model.encoder))
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
    ete: float | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run the benchmark and write ``results.json``, ``report.md`` and the convergence figures.

    The same call into the same folder continues it: finished runs are kept, an unfinished one
    resumes from its last checkpoint (the engine's exact resume), and a folder holding a benchmark of
    other settings is refused, so that a study longer than one sitting completes over several.

    Args:
        testbed: a ``Testbed`` or the name of one in ``TESTBEDS``.
        output_dir: receives ``runs/<run>/``, ``results.json`` (rewritten after every run, so an
            interrupted benchmark keeps what it measured), ``report.md`` and PNG figures.
        sections: comparisons to run, from ``main, pred_ratio, targets, decoder, profile``
            (default: the testbed's).
        seeds: default: the testbed's.
        budget_s: training seconds per run (default: the testbed's, unless it is a fixed-ETE one); not with ``ete``.
        data_path: ``data.path`` of every run (e.g. a folder with Fashion-MNIST's ``*-ubyte.gz``).
        device: ``train.device`` of every run (default: the testbed's).
        command: the command line, for the report.
        monitor: evaluator replacing the default ``OnlineMonitor`` (tests; ``dmjd compare``'s label-free one).
        metrics: the monitor's measures to analyse, ``{key: name}`` (default: ``METRICS``, the probes').
        ete: instead of a time budget, every run trains exactly this many effective epochs (its
            warmup + cosine span them) and is evaluated at ``ete_grid(ete)``: figures that do not
            depend on the machine's load (default: the testbed's ``ete``, unless ``budget_s`` is given).
        overwrite: delete an earlier benchmark in ``output_dir`` and start afresh.

    Returns:
        The results dict written to ``results.json`` (with its ``analysis``).

    Raises:
        ValueError: unknown testbed or section.
        InputError: ``ete`` with ``budget_s``, an ``ete`` that is not a whole number of epochs, or a
            folder holding something else (one line each; nothing is written).
    """
    from dmjd.bench.ete_report import write_benchmark_report
    from dmjd.bench.profile import profile_configs

    started = time.perf_counter()
    testbed = TESTBEDS[testbed] if isinstance(testbed, str) else testbed
    fixed_ete = ete is not None or (budget_s is None and testbed.ete is not None)
    # a fixed-ETE benchmark leaves out the testbed's step profile (a timing); naming it is refused below
    sections = tuple(sections or (s for s in testbed.sections if not (fixed_ete and s == "profile")))
    unknown = [s for s in sections if isinstance(s, str) and s not in SECTION_NAMES]
    if unknown:
        raise ValueError(f"unknown benchmark section(s) {', '.join(unknown)}; choose from {', '.join(SECTION_NAMES)}")
    if ete is not None and (budget_s is not None or "profile" in sections):
        raise InputError("--ete ends every run after a number of effective epochs: give no time budget and no profile section")
    seeds = tuple(seeds if seeds is not None else testbed.seeds)
    if testbed.data and not data_path:
        raise InputError(f"testbed {testbed.name} needs --data-path: {testbed.data}")
    ete = ete if ete is not None or budget_s is not None else testbed.ete
    budget = None if ete is not None else float(budget_s or testbed.budget_s)
    out = Path(output_dir)
    runs, comparisons = plan_runs(testbed, [s for s in sections if s != "profile"], seeds, budget, data_path, device, ete)
    settings = _settings(testbed, sections, seeds, budget, ete, data_path, device)
    saved = previous_results(out, settings, overwrite)
    profiled = {
        v.label: load_config(None, run_overrides(testbed, v, seeds[0], budget, data_path, device))
        for v in (SECTIONS["main"].variants[0], SECTIONS["main"].variants[-1])  # MAE and DMJD
    } if "profile" in sections else {}  # fmt: skip
    first = runs[0].cfg if runs else next(iter(profiled.values()), None)
    out.mkdir(parents=True, exist_ok=True)
    with thread_limit(testbed.threads):
        results: dict[str, Any] = {
            "benchmark": BENCHMARK,
            "command": command,
            "date": saved.get("date", now_utc()),
            "commit": git_commit(),
            "sittings": [*saved.get("sittings", []), {"date": now_utc(), "commit": git_commit(), "command": command}],
            "machine": machine_info(resolve_device(first.train.device if first is not None else "auto")),
            "testbed": asdict(testbed),
            "settings": settings,
            "sections": [s if isinstance(s, str) else s.name for s in sections],
            "metrics": metrics or METRICS,
            "seeds": list(seeds),
            "budget_s": budget,
            "ete": ete,
            "data_path": data_path,
            "schedule_rule": _schedule_rule(testbed, budget, ete),
            "comparisons": comparisons,
            "runs": {k: v for k, v in saved.get("runs", {}).items() if k in {r.key for r in runs}},
            **{k: saved[k] for k in ("baselines", "evaluation") if k in saved},  # kept while this sitting runs
        }
        write_json(results, out / "results.json")  # marks the folder as this benchmark's from the start
        if runs:
            monitor = monitor or build_monitor(runs[0].cfg, testbed.eval_images, testbed.pool)
            finetune = EndOfRunFinetune(monitor, testbed.finetune_epochs)
            results["evaluation"] = {
                "images_per_split": testbed.eval_images,
                "knn_k": getattr(monitor, "k", None),
                "pool": getattr(monitor, "pool", None),
                "finetune_epochs": testbed.finetune_epochs,
            }
            results["baselines"] = saved.get("baselines") or baselines(runs[0].cfg, monitor, finetune)
            _train_all(runs, testbed, budget, ete, monitor, finetune, out, results)
        if "profile" in sections:
            work = out / "profile-work"
            results["profile"] = profile_configs(profiled, work, testbed.profile_steps, testbed.profile_warmup)
    results["wall_s"] = saved.get("wall_s", 0.0) + time.perf_counter() - started
    results["analysis"] = analyse(results)
    write_json(results, out / "results.json")
    if set(METRICS) <= set(results["metrics"]):  # the probes' report; a label-free caller writes its own
        write_benchmark_report(results, out)
    return results


BENCHMARK = "dmjd efficiency"


def _settings(
    testbed: Testbed, sections: Sequence[str | Section], seeds: Sequence[int], budget: float | None,
    ete: float | None, data_path: str | None, device: str | None,
) -> dict[str, Any]:  # fmt: skip
    """What a benchmark folder's runs depend on, as JSON data: a continued benchmark must match it."""
    named = [s if isinstance(s, str) else asdict(s) for s in sections]
    data = {"testbed": asdict(testbed), "sections": named, "seeds": list(seeds), "budget_s": budget, "ete": ete,
            "data_path": data_path, "device": device}  # fmt: skip
    return cast(dict[str, Any], json.loads(json.dumps(data, default=str)))


def previous_results(out: Path, settings: dict[str, Any], overwrite: bool) -> dict[str, Any]:
    """The results an earlier sitting of the same benchmark saved in ``out`` ({} for a new folder),
    after checking that it is the same benchmark; with ``overwrite`` the earlier benchmark is deleted.

    Raises:
        InputError: ``out`` holds other files, or a benchmark of other settings (nothing is touched).
    """
    path = out / "results.json"
    if overwrite and path.is_file():
        shutil.rmtree(out / "runs", ignore_errors=True)
        path.unlink()
    if not path.is_file():
        if out.is_dir() and any(out.iterdir()):
            raise InputError(f"{out} is not empty and holds no benchmark (results.json); choose another --output-dir")
        return {}
    saved = cast(dict[str, Any], json.loads(path.read_text()))
    if saved.get("benchmark") != BENCHMARK or "settings" not in saved:
        raise InputError(f"{out} holds results of another command or an older dmjd; choose another --output-dir "
                         "(or --overwrite)")  # fmt: skip
    changed = [key for key in settings if saved["settings"].get(key) != settings[key]]
    if changed:
        raise InputError(f"{out} holds a benchmark with other {', '.join(changed)}; run its own command to continue "
                         "it, or choose another --output-dir (--overwrite starts afresh)")  # fmt: skip
    return saved


def _schedule_rule(testbed: Testbed, budget: float | None, ete: float | None) -> str:
    """The report's sentence on how long each run trains and when it is evaluated."""
    if ete is not None:
        return ETE_RULE.format(ete=ete, warmup=testbed.warmup_fraction, grid=", ".join(f"{x:g}" for x in ete_grid(ete)))
    return SCHEDULE_RULE.format(calibrate_s=testbed.calibrate_s, warmup=testbed.warmup_fraction, budget_s=budget,
                                tolerance_pct=100 * BUDGET_TOLERANCE, eval_points=testbed.eval_points)  # fmt: skip


def _train_all(
    runs: list[PlannedRun], testbed: Testbed, budget: float | None, ete: float | None, monitor: Monitor,
    finetune: EndOfRunFinetune, out: Path, results: dict[str, Any],
) -> None:  # fmt: skip
    """Train every run not finished in an earlier sitting (an unfinished one resumes from its last
    checkpoint); save the results after each, then delete its checkpoints. A budgeted benchmark first
    warms the process up, so that one-off costs do not fall on its first timed run."""
    todo = [run for run in runs if run.key not in results["runs"]]
    if todo and ete is None:
        warm_up_process(todo[0].cfg, testbed.calibrate_s, out / "warm-up")
    for i, run in enumerate(runs, 1):
        head = f"bench: [{i}/{len(runs)}] {run.label} seed {run.seed}"
        if run.key in results["runs"]:
            print(f"{head}: finished in an earlier sitting, kept", flush=True)
            continue
        run_dir = out / "runs" / run.key
        evaluator: PeriodicEvaluator
        if ete is not None:
            grid = ete_grid(ete)
            length, evaluator = (
                f"{ete:g} ETE, evaluated at ETE {', '.join(f'{x:g}' for x in grid)}",
                EteEvaluator(monitor, grid),
            )
        else:
            length = f"{budget:g} s budget, about {testbed.eval_points} evaluations"
            evaluator = PeriodicEvaluator(monitor, points=testbed.eval_points)
        again = ", resuming its checkpoint" if (run_dir / ckpt.LAST).is_file() else ""
        print(f"{head}: {length}{again}", flush=True)
        record = train_run(run.cfg, run_dir, evaluator, finetune, resume=True)
        results["runs"][run.key] = {"label": run.label, "seed": run.seed, "overrides": run.overrides, **record}
        write_json(results, out / "results.json")
        delete_checkpoints(run_dir)


def write_json(data: dict[str, Any], path: Path) -> None:
    """Write ``data`` to ``path`` as indented JSON, atomically (a temporary file then a rename)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


# ----------------------------------------------------------------------------------- analysis
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
    all_ete = [c for v in variants for c in seed_curves(results, v["runs"], "ete", names[0]).values()]
    equal_ete = common_end(all_ete) if all_ete else 0.0
    metrics: dict[str, dict[str, Any]] = {}
    for metric in names:
        base_time = seed_curves(results, baseline["runs"], "time", metric)
        base_ete = seed_curves(results, baseline["runs"], "ete", metric)
        table = {}
        for v in variants:
            time_curves = seed_curves(results, v["runs"], "time", metric)
            ete_curves = seed_curves(results, v["runs"], "ete", metric)
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
    return {"equal_time_s": budget, "equal_ete": equal_ete, "metrics": metrics, "runs": runs_info(results, variants)}


def analyse(results: dict[str, Any]) -> dict[str, Any]:
    """The analysis of every comparison that has runs: at equal wall time for a budgeted benchmark,
    at equal ETE for a fixed-ETE one (``dmjd.bench.equal_ete``)."""
    read = analyse_equal_ete if results.get("ete") else analyse_comparison
    return {name: read(results, name) for name in results["comparisons"]}
