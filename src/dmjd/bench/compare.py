"""``dmjd compare``: does DMJD pay off on *this* data? The efficiency benchmark on the user's data.

One engine with ``dmjd bench``: a comparison here is a ``Section`` and a ``Testbed`` made for the
data, run by ``dmjd.bench.efficiency.run_efficiency``.

* The model, image size, batch and base lr come from the auto recipe (``dmjd.recipe``) sized for DMJD
  (the costlier method), so every method trains the same model; each method's masking, target and
  branches are its own recipe's (``dmjd.recipe.method_choices``).
* Every run gets the same wall-clock budget (``train.budget``: each plans its own schedule to end
  there), methods alternate seed by seed, and evaluations are spaced over the run.
* Labelled data (class sub-folders; a ``val/`` beside ``train/`` is the probes' test split, otherwise
  a seeded stratified split): kNN and linear probe during training, end-of-run fine-tuning with the
  small-data recipe, and the baselines (untrained encoder, raw pixels, fine-tuning from scratch).
* Unlabelled data (a flat folder): RankMe of the features of a fixed sample of the images during
  training and each run's masked-prediction loss on them at the end; no probe is possible.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dmjd.bench.cost import cost_split, regime_sentence
from dmjd.bench.efficiency import METRICS, run_efficiency, write_json
from dmjd.bench.report import ci_bound
from dmjd.bench.testbeds import SECTIONS, Section, Testbed, Variant
from dmjd.config import load_config
from dmjd.config.duration import format_duration
from dmjd.data.profile import DataProfile
from dmjd.engine.start_weights import config_for_source
from dmjd.errors import InputError
from dmjd.eval.label_free import LabelFreeMonitor
from dmjd.models.sources import load_source
from dmjd.recipe import STEP_EFFICIENCY, Choice, auto_config, device_flops, method_choices

METHOD_LABELS = {"mae": "MAE", "dmjd": "DMJD"}
LABEL_FREE_METRICS = {"rankme": "RankMe"}
RUN_SETTINGS = (
    "train.progress=false", "train.tensorboard=false", "train.checkpoint_interval=100000", "train.log_interval=20",
    "monitor.interval=0",
)  # fmt: skip
EVAL_POINTS = 6
EVAL_IMAGES = 2000
FINETUNE_EPOCHS = 10


@dataclass(frozen=True)
class CompareSetup:
    """What a comparison runs: its testbed (common settings), its section (one variant per method),
    the data's profile and the recipe's common choices (with their reasons, for the report)."""

    testbed: Testbed
    section: Section
    profile: DataProfile
    choices: tuple[Choice, ...]


def data_override(data: str) -> str:
    """``data.name=NAME`` for a named data set (``embedded``, ``fashion_mnist``, ...), else ``data.path=DATA``."""
    from dmjd.data import DATASET_NAMES

    return f"data.name={data}" if data in DATASET_NAMES else f"data.path={data}"


def compare_setup(
    data: str,
    budget_s: float,
    methods: Sequence[str] = ("mae", "dmjd"),
    seeds: Sequence[int] = (0, 1, 2),
    device: str | None = None,
    finetune_epochs: int | None = None,
    flops_per_s: float | None = None,
    init: str | None = None,
) -> CompareSetup:
    """The testbed and section of a comparison of ``methods`` on ``data`` at ``budget_s`` per run;
    with ``init`` (any source ``model.init`` takes), every run continues from those weights.

    Raises:
        InputError: unknown or repeated methods, fine-tuning asked on unlabelled data, or what the
            recipe refuses (a data set smaller than a batch, a folder without images).
    """
    unknown = [m for m in methods if m not in METHOD_LABELS]
    if unknown or len(set(methods)) != len(methods) or len(methods) < 2:
        raise InputError(f"--methods takes two or more of {', '.join(METHOD_LABELS)}, each once; got {','.join(methods)}")
    overrides = [data_override(data), f"train.budget={budget_s:g}", "recipe.method=dmjd"]
    overrides += [f"train.device={device}"] if device else []
    start = (f"model.init={init}",) if init else ()
    cfg, choices, profile = auto_config([*overrides, *start], device, flops_per_s)
    if finetune_epochs and not profile.labelled:
        raise InputError(f"{data} has no labels (no class sub-folders): fine-tuning needs them; drop --finetune-epochs")
    grid, patch, width = cfg.model.img_size // cfg.model.patch_size, cfg.model.patch_size, cfg.model.embed_dim
    if width is None:  # the auto recipe chooses no width when model.init gives it
        width = load_source(str(init)).arch.embed_dim
    per_method = {m: method_choices(m, grid, patch, width) for m in methods}
    method_keys = {c.key for cs in per_method.values() for c in cs}
    common = tuple(c for c in choices if c.key not in method_keys and not c.key.startswith(("train.budget", "monitor.")))
    device_override = (f"train.device={device}",) if device else ()
    labels = [METHOD_LABELS[m] for m in methods]
    baseline = "MAE" if "MAE" in labels else labels[0]
    testbed = Testbed(
        name="compare",
        description=f"the auto recipe for {data} ({profile.num_images:,} images, "
        f"{'labelled' if profile.labelled else 'unlabelled'}), one model for every method"
        + (f", every run continuing from {init}" if init else ""),
        base=(data_override(data), *start, *(c.override for c in common), *device_override, *RUN_SETTINGS),
        budget_s=budget_s,
        calibrate_s=min(10.0, budget_s / 10),
        eval_points=EVAL_POINTS,
        eval_images=EVAL_IMAGES,
        seeds=tuple(seeds),
        sections=(),
        pool="avg",
        finetune_epochs=(FINETUNE_EPOCHS if finetune_epochs is None else finetune_epochs) if profile.labelled else 0,
    )
    core = SECTIONS["core"]
    section = Section(
        name="compare",
        title=f"{' against '.join(reversed(labels))} on {data}, {format_duration(budget_s)} per run",
        paper=core.paper,
        baseline=baseline,
        variants=tuple(Variant(METHOD_LABELS[m], tuple(c.override for c in per_method[m])) for m in methods),
        expected_pairs=tuple((baseline, lab) for lab in labels if lab != baseline),
        claims=core.claims if set(labels) == {"MAE", "DMJD"} else (),
    )
    return CompareSetup(testbed, section, profile, common)


def label_free_monitor(setup: CompareSetup, device: str | None = None) -> LabelFreeMonitor:
    """RankMe (and, at the end of each run, the held-out loss) on a seeded sample of the images:
    the ``val/`` images when the folder has them, else a sample of the training images."""
    import torch

    from dmjd.config import load_config
    from dmjd.data import Normalize
    from dmjd.data.arrays import load_image_array
    from dmjd.engine.builders import mean_std
    from dmjd.engine.runtime import resolve_device

    cfg = load_config(None, [*setup.testbed.base, *setup.section.variants[0].overrides])
    dev = resolve_device(device or cfg.train.device)
    split = "test" if setup.profile.has_val else "train"
    array = load_image_array(
        cfg.data.name, split, cfg.data.path, cfg.model.img_size, cfg.model.in_chans, background=cfg.data.background
    )
    images = torch.from_numpy(array.images)
    keep = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:EVAL_IMAGES].sort().values
    mean, std = mean_std(cfg)
    return LabelFreeMonitor(images[keep].to(dev), Normalize(mean, std).to(dev), pool="avg", source=split)


def run_compare(
    data: str,
    output_dir: str | Path,
    budget_s: float,
    methods: Sequence[str] = ("mae", "dmjd"),
    seeds: Sequence[int] = (0, 1, 2),
    device: str | None = None,
    finetune_epochs: int | None = None,
    command: str = "",
    flops_per_s: float | None = None,
    overwrite: bool = False,
    init: str | None = None,
) -> dict[str, Any]:
    """Run the comparison and write ``results.json``, ``report.md`` (with its verdict) and figures.

    The same call into the same folder continues a comparison that was stopped (``run_efficiency``:
    finished runs kept, an unfinished one resumed; the recipe is made with the device speed the first
    sitting measured, so that it picks the same model); ``overwrite`` starts afresh.

    Returns:
        The results, with ``analysis``, ``verdict``, ``data_profile``, ``recipe`` and ``cost`` (the
        per-view cost split of this data path, ``dmjd.bench.cost.cost_split``).
    """
    out = Path(output_dir)
    flops_per_s = flops_per_s or (None if overwrite else _saved_flops(out)) or recipe_flops(device)
    setup = compare_setup(data, budget_s, methods, seeds, device, finetune_epochs, flops_per_s, init)
    labelled = setup.profile.labelled
    monitor = None if labelled else label_free_monitor(setup, device)
    results = run_efficiency(setup.testbed, out, sections=[setup.section], command=command, monitor=monitor,
                             metrics=METRICS if labelled else LABEL_FREE_METRICS, overwrite=overwrite)  # fmt: skip
    results["flops_per_s"] = flops_per_s
    configs = {v.label: load_config(None, [*setup.testbed.base, *v.overrides]) for v in setup.section.variants}
    if init:  # the architecture the runs take from their start
        start = load_source(init)
        configs = {label: config_for_source(cfg, start) for label, cfg in configs.items()}
    results["cost"] = results.get("cost") or cost_split(configs, out / "cost-work")
    results["data_profile"] = asdict(setup.profile)
    results["recipe"] = [{"key": c.key, "value": c.value, "reason": c.reason} for c in setup.choices]
    if monitor is not None:  # not labelled
        results["evaluation"] = {"images": len(monitor.images), "split": monitor.source, "pool": monitor.pool}
    results["verdict"] = verdict(results)
    write_json(results, out / "results.json")
    write_compare_report(results, out)
    return results


def recipe_flops(device: str | None) -> float:
    """The sustained step FLOP/s the auto recipe sizes the model by, measured on ``device``."""
    from dmjd.engine.runtime import resolve_device  # local: loads torch

    dev = resolve_device(device or "auto")
    return device_flops(str(dev)) * STEP_EFFICIENCY.get(dev.type, 0.15)


def _saved_flops(out: Path) -> float | None:
    """The FLOP/s an earlier sitting of a comparison in ``out`` made its recipe with (None: none)."""
    path = out / "results.json"
    return json.loads(path.read_text()).get("flops_per_s") if path.is_file() else None


# ------------------------------------------------------------------------------------ verdict
def verdict(results: dict[str, Any]) -> str:
    """One sentence: with labels, how much sooner each method reached the baseline's final kNN (95 % CI)
    and the seed-paired fine-tuning difference; without, the seed-paired RankMe difference at equal time."""
    a = results["analysis"]["compare"]
    comparison = results["comparisons"]["compare"]
    base = comparison["baseline"]
    labelled = "knn_top1" in a["metrics"]
    parts = []
    for label in (v["label"] for v in comparison["variants"] if v["label"] != base):
        if labelled:
            parts.append(_reach_words(a["metrics"]["knn_top1"][label], label, base, len(results["seeds"])))
            parts.append(_paired_words(a["metrics"]["knn_top1"], base, label, f"{label} - {base} kNN at equal time"))
            finetune = {lab: {"at_time_by_seed": run["finetune_by_seed"]} for lab, run in a["runs"].items()}
            parts.append(_paired_words(finetune, base, label, "fine-tuning"))
        else:
            parts.append(_paired_words(a["metrics"]["rankme"], base, label, f"{label} - {base} RankMe at equal time", 1))
    return "; ".join(p for p in parts if p) + "."


def _reach_words(entry: dict[str, Any], label: str, base: str, seeds: int) -> str:
    """How much sooner ``label`` reached the baseline's final kNN, or why that is not defined."""
    speed = entry["speedup"]
    if speed["mean"] is None:
        if entry["reached"]:
            return f"{label}'s speed-up to {base}'s final kNN is undefined: the encoders before training already scored it"
        return f"{label} did not reach {base}'s final kNN within the budget (0/{entry['seeds']} seeds)"
    ci = f" [{ci_bound(speed['ci_low'])}, {ci_bound(speed['ci_high'])}]" if speed.get("ci_low") is not None else ""
    count = f"{seeds} seeds" if speed["n"] == seeds else f"{speed['n']} of {seeds} seeds"
    words = f"{label} reached {base}'s final kNN {speed['mean']:.2f}x sooner{ci} over {count}"
    if speed.get("ci_low") is not None and speed["ci_low"] <= 1 <= speed["ci_high"]:
        words += " (not resolved)"
    return words


def _paired_words(table: dict[str, Any], base: str, label: str, what: str, scale: float = 100) -> str:
    """``what`` as a seed-paired difference at equal time with its 95 % CI ('' without paired seeds)."""
    from dmjd.bench.analysis import aggregate, difference_verdict

    a, b = table[base]["at_time_by_seed"], table[label]["at_time_by_seed"]
    stats = aggregate([b[s] - a[s] for s in a if a[s] is not None and b.get(s) is not None])
    if stats.mean is None:
        return ""
    unit = " points" if scale == 100 else ""
    if stats.ci_low is None or stats.ci_high is None:
        return f"{what} {scale * stats.mean:+.1f}{unit} (one seed)"
    lo, hi = stats.ci_low, stats.ci_high
    return f"{what} {scale * stats.mean:+.1f}{unit} [{scale * lo:+.1f}, {scale * hi:+.1f}]: {difference_verdict(asdict(stats))}"


# ------------------------------------------------------------------------------------- report
def recipe_lines(results: dict[str, Any]) -> list[str]:
    """The data and the recipe every method shared, with the reasons."""
    p = results["data_profile"]
    labels = f"{p['num_classes']} classes" if p["labelled"] else "no labels"
    aside = f" (and {p['held_out']:,} held out for the probes' test split)" if p.get("held_out") else ""
    lines = [f"- Data: {p['name']} at {p['path'] or 'its default location'}: {p['num_images']:,} images{aside}, typically "
             f"{p['typical_size'][0]}x{p['typical_size'][1]} px, {p['channels']} channel(s), {labels}"]  # fmt: skip
    lines += ["- The recipe every method shares (`dmjd.recipe`, sized for DMJD):"]
    lines += [f"  - `{r['key']}={r['value']}`: {r['reason']}" for r in results["recipe"]]
    return lines


def label_free_lines(results: dict[str, Any]) -> list[str]:
    """The unlabelled data's table: RankMe before, at equal time and at the end, and held-out losses."""
    from dmjd.bench.report import number

    a = results["analysis"]["compare"]
    ev = results["evaluation"]
    held_out = ev["split"] == "test"
    where = "the val/ images" if held_out else "a seeded sample of the training images (no val/ folder)"
    lines = [
        f"No probe was possible: the data has no labels. Label-free measures instead, on {ev['images']} images "
        f"({where}): RankMe (Garrido et al. 2023; the effective rank of the average-pooled features, higher = more "
        "directions used) during training, and each run's masked-prediction loss on them at the end. The losses of "
        "two methods are comparable only with the same target and masking (MAE's norm-pix and DMJD's HOG are not).",
        "",
        "| method | runs | ETE | RankMe untrained | RankMe @ budget | speed-up to baseline's final | "
        f"loss on the {'val/' if held_out else 'training'} images at the end |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant in results["comparisons"]["compare"]["variants"]:
        label = variant["label"]
        m, run = a["metrics"]["rankme"][label], a["runs"][label]
        held = "; ".join(f"{k.split('/')[-1]} {number(v, 4)}" for k, v in heldout_stats(results, variant["runs"]).items())
        lines.append(f"| {label} | {m['seeds']} | {number(run['ete'])} | {number(m['start'])} | {number(m['at_time'])} | "
                     f"{_ratio(m)} | {held or '-'} |")  # fmt: skip
    lowered = rankme_drop(a["metrics"]["rankme"])
    return [*lines, "", lowered] if lowered else lines


def rankme_drop(rankme: dict[str, dict[str, Any]]) -> str:
    """A sentence naming the methods whose RankMe at the budget ended below the untrained encoder's
    ('' when none did): by RankMe's own reading their features use fewer directions than at the start."""
    from dmjd.bench.report import number

    fell = [f"{label} {number(m['start'])} -> {number(m['at_time'])}" for label, m in rankme.items()
            if m["start"]["mean"] is not None and m["at_time"]["mean"] is not None
            and m["at_time"]["mean"] < m["start"]["mean"]]  # fmt: skip
    if not fell:
        return ""
    return (f"Training lowered RankMe below the untrained encoder's ({'; '.join(fell)}): by this measure the trained "
            "features use fewer directions than the untrained ones, so on this data and budget the label-free reading "
            "does not show pre-training helping; a probe on labelled images would tell more.")  # fmt: skip


def heldout_stats(results: dict[str, Any], runs: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Mean and spread over seeds of each held-out loss term of the runs ``{seed: run key}``."""
    from dataclasses import asdict

    from dmjd.bench.analysis import aggregate

    records = [results["runs"][key].get("heldout", {}) for key in runs.values() if key in results["runs"]]
    terms = sorted({term for record in records for term in record})
    return {term: asdict(aggregate([record.get(term) for record in records])) for term in terms}


def _ratio(entry: dict[str, Any]) -> str:
    from dmjd.bench.report import ratio

    return ratio(entry["speedup"], entry["reached"])


def write_compare_report(results: dict[str, Any], output_dir: Path) -> Path:
    """``report.md``: the verdict, the data and recipe, then the benchmark's report (labelled data)
    or the label-free table and figures (unlabelled)."""
    from dmjd.bench.report import machine_line, plot_comparison, write_report

    head = ["# dmjd compare", "", f"**Verdict:** {results['verdict']}", "", *recipe_lines(results), ""]
    if results.get("cost"):
        head += [f"- Cost per view on this machine: {regime_sentence(results['cost'])}", ""]
    path = output_dir / "report.md"
    if "knn_top1" in results["metrics"]:
        write_report(results, output_dir)
        path.write_text("\n".join(head) + "\n" + path.read_text().replace("# dmjd efficiency benchmark", "## Details", 1))
        return path
    m = results["machine"]
    body = [
        f"- Command: `{results['command'] or '(called from Python)'}`",
        f"- Machine: {machine_line(m)}; torch {m['torch']}, dmjd {m['dmjd']}",
        f"- Date (UTC): {results['date']}; commit: `{results['commit']}`; whole comparison "
        f"{results.get('wall_s', 0) / 60:.1f} min",
        f"- Schedule rule: {results['schedule_rule']}",
        "",
        *label_free_lines(results),
        "",
    ]
    for x in ("time", "ete"):
        png = plot_comparison(results, "compare", x, output_dir / f"compare_{x}.png")
        body.append(f"![RankMe against {x}]({png.name})")
    path.write_text("\n".join(head + body) + "\n")
    return path
