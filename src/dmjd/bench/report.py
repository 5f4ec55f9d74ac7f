"""The benchmark's report: markdown tables, convergence figures and a plain reading, all generated
from ``results.json`` (no number in the report is typed by hand)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from dmjd.bench.analysis import Curve, aggregate, mean_curve, no_spread
from dmjd.bench.testbeds import SECTIONS, Claim, Section, Variant, saved_testbed

METRIC_NAMES = {"linprobe_top1": "linear probe", "knn_top1": "kNN"}
PRIMARY = "linprobe_top1"
AXES = {"time": "training time (s)", "ete": "effective training epochs (ETE)"}


def section_of(results: dict[str, Any], name: str) -> Section:
    """The ``Section`` a comparison ran: as saved in the results (``plan_runs``), else the named one."""
    saved = results["comparisons"][name].get("section")
    if saved is None:
        return SECTIONS[name]
    return Section(**{
        **saved,
        "variants": tuple(Variant(v["label"], tuple(v["overrides"])) for v in saved["variants"]),
        "expected_pairs": tuple(tuple(p) for p in saved["expected_pairs"]),
        "claims": tuple(Claim(**c) for c in saved["claims"]),
    })  # fmt: skip


def metric_scale(metric: str) -> float:
    """Accuracies (``*_top1`` fractions) are shown in percent, other measures (RankMe) as they are."""
    return 100.0 if metric.endswith("top1") else 1.0


def pct(stats: dict[str, Any]) -> str:
    """``mean ± std`` of an accuracy fraction, in percent ('-' when undefined)."""
    if stats["mean"] is None:
        return "-"
    text = f"{100 * stats['mean']:.1f}"
    return text + (f" ± {100 * stats['std']:.1f}" if stats["std"] is not None else "")


def ratio(stats: dict[str, Any], reached: int | None = None) -> str:
    """``mean x [95 % CI]`` of a speed-up, with ``(n/total)`` when it is defined for only some seeds.

    Undefined everywhere means never reached (``reached`` 0), or reached before any training
    because the baseline ended no better than it started (the untrained encoder already scored it).
    """
    if stats["mean"] is None:
        return f"not reached (0/{stats['total']})" if not reached else "undefined (reached before any training)"
    low, high = stats.get("ci_low"), stats.get("ci_high")
    text = f"{stats['mean']:.2f}x" + (f" [{ci_bound(low)}, {ci_bound(high)}]" if low is not None and high is not None else "")
    return text + (f" ({stats['n']}/{stats['total']})" if stats["n"] < stats["total"] else "")


def ci_bound(value: float) -> str:
    """A bound of a speed-up's CI; beyond 0.01x-100x as ``<0.01`` / ``>100`` (two seeds' t-interval on
    log ratios spans many decades, and its digits say nothing)."""
    return "<0.01" if value < 0.01 else ">100" if value > 100 else f"{value:.2f}"


def machine_line(machine: dict[str, Any]) -> str:
    """The device and the CPU of ``dmjd.bench.environment.machine_info``, the CPU named once when it
    is the device: ``CPU AMD EPYC (2 cores, 2 torch threads)`` or ``NVIDIA H100; CPU ... (...)``."""
    threads = f", {machine['torch_threads']} torch threads" if machine.get("torch_threads") else ""
    cpu = f"CPU {machine['cpu']} ({machine['cpu_count']} cores{threads})"
    return cpu if str(machine["device"]).startswith("CPU") else f"{machine['device']}; {cpu}"


def number(stats: dict[str, Any], digits: int = 1) -> str:
    """``mean`` (and ``± std``) of a plain quantity."""
    if stats["mean"] is None:
        return "-"
    text = f"{stats['mean']:.{digits}f}"
    return text + (f" ± {stats['std']:.{digits}f}" if stats["std"] else "")


def seconds_to_level(per_seed: dict[str, float | None]) -> str:
    """Mean seconds (or ETE) to reach the level over the seeds that reached it."""
    values = [v for v in per_seed.values() if v is not None]
    return f"{np.mean(values):.1f}" if values else "never"


# ------------------------------------------------------------------------------------ figures
def _run_curves(results: dict[str, Any], keys: dict[str, str], x: str, metric: str) -> list[Curve]:
    curves = []
    for key in keys.values():
        run = results["runs"].get(key)
        if run is not None:
            curves.append(Curve.from_points([p for p in run["points"] if p.get(metric) is not None], x, metric))
    return [c for c in curves if c.x]


def plot_comparison(results: dict[str, Any], name: str, x: str, path: Path) -> Path:
    """Accuracy against training time or ETE, one line per variant (mean over seeds, min-max band),
    one panel per metric."""
    comparison = results["comparisons"][name]
    base = next(v for v in comparison["variants"] if v["label"] == comparison["baseline"])
    names = results.get("metrics", METRIC_NAMES)
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 3.8), squeeze=False)
    for ax, (metric, metric_name) in zip(axes[0], names.items()):
        scale = metric_scale(metric)
        base_curves = _run_curves(results, base["runs"], x, metric)
        if base_curves:
            level = scale * float(np.mean([c.final for c in base_curves]))
            ax.axhline(level, color="0.5", linestyle=":", linewidth=1, label=f"{base['label']} final")
        for variant in comparison["variants"]:
            curves = _run_curves(results, variant["runs"], x, metric)
            if not curves:
                continue
            grid = np.linspace(0.0, max(c.end for c in curves), 200)
            mean, low, high = mean_curve(curves, grid)
            (line,) = ax.plot(grid, scale * mean, label=variant["label"])
            ax.fill_between(grid, scale * low, scale * high, color=line.get_color(), alpha=0.15, linewidth=0)
            for c in curves:
                ax.plot(c.x, scale * np.asarray(c.y), "o", color=line.get_color(), markersize=2.5)
        ax.set_xlabel(AXES[x])
        ax.set_ylabel(f"{metric_name} top-1 (%)" if scale == 100 else metric_name)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{comparison['title']} ({len(results['seeds'])} seed(s); band: min-max)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------- tables
def comparison_table(results: dict[str, Any], name: str) -> list[str]:
    """The markdown table of one comparison."""
    a = results["analysis"][name]
    base = results["comparisons"][name]["baseline"]
    t, e = a["equal_time_s"], a["equal_ete"]
    head = (
        f"| variant | K | m_pred | scheduled epochs | ETE | train s | linear @ {t:g} s | kNN @ {t:g} s | "
        f"linear @ ETE {e:.1f} | kNN @ ETE {e:.1f} | s to {base} final | speed-up (time) | "
        f"ETE to {base} final | speed-up (ETE) | fine-tune |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for variant in results["comparisons"][name]["variants"]:
        label = variant["label"]
        run, lin, knn = a["runs"][label], a["metrics"][PRIMARY][label], a["metrics"]["knn_top1"][label]
        if run["num_views"] is None:
            continue
        lines.append(
            f"| {label} | {run['num_views']} | {run['pred_ratio']:.2f} | {number(run['scheduled_epochs'], 2)} | "
            f"{number(run['ete'])} | {number(run['time_s'])} | {pct(lin['at_time'])} | {pct(knn['at_time'])} | "
            f"{pct(lin['at_ete'])} | {pct(knn['at_ete'])} | {seconds_to_level(lin['time_to_level'])} | "
            f"{ratio(lin['speedup'], lin['reached'])} | {seconds_to_level(lin['ete_to_level'])} | "
            f"{ratio(lin['ete_speedup'], lin['reached'])} | {pct(run.get('finetune', {'mean': None}))} |"
        )
    return lines


def baseline_lines(results: dict[str, Any], name: str) -> list[str]:
    """The baselines every table is read against: untrained encoder, raw pixels, fine-tuning from scratch."""
    a = results["analysis"][name]
    first = results["comparisons"][name]["variants"][0]["label"]
    lin, knn = a["metrics"][PRIMARY][first]["start"], a["metrics"]["knn_top1"][first]["start"]
    base = results.get("baselines", {})
    start = (
        f"Starting encoder (model.init={base['init']}, before training)"
        if base.get("init")
        else "Untrained encoder (before training)"
    )
    lines = [f"- {start}: linear {pct(lin)} %, kNN {pct(knn)} %"]
    if "untrained" in base:
        fresh = base["untrained"]
        lines.append(f"- Untrained encoder of the same architecture: linear {100 * fresh.get('linprobe_top1', float('nan')):.1f} %, "
                     f"kNN {100 * fresh['knn_top1']:.1f} %")  # fmt: skip
    if "raw_pixels" in base:
        raw = base["raw_pixels"]
        lines.append(
            f"- Raw pixels (same splits, same probes): linear {100 * raw.get('linprobe_top1', float('nan')):.1f} %, "
            f"kNN {100 * raw['knn_top1']:.1f} %"
        )
    finetunes = [
        f"{100 * p['baselines']['untrained_finetune_top1']:.1f} % (seed {p['seeds'][0]})"
        for p in results.get("parts", ())
        if p.get("baselines", {}).get("untrained_finetune_top1") is not None
    ]  # a merged output: each part fine-tuned its first seed's initialisation
    if finetunes:
        lines.append(f"- Fine-tuning the untrained encoder (same recipe): {', '.join(finetunes)}")
    elif base.get("untrained_finetune_top1") is not None:
        lines.append(f"- Fine-tuning the untrained encoder (same recipe): {100 * base['untrained_finetune_top1']:.1f} %")
    if base.get("start_finetune_top1") is not None:
        lines.append(f"- Fine-tuning the starting encoder (same recipe): {100 * base['start_finetune_top1']:.1f} %")
    return lines


def profile_table(profile: dict[str, Any]) -> list[str]:
    """Milliseconds per step by part, for each profiled configuration."""
    from dmjd.bench.profile import PARTS

    head = "| config | device | batch x K | " + " | ".join(f"{p} ms" for p in PARTS)
    head += " | sum ms | plain step ms | images/s | views/s |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for label, p in profile["configs"].items():
        parts = " | ".join(f"{p['ms'][part]:.2f}" for part in PARTS)
        lines.append(
            f"| {label} | {p['device']} | {p['batch_size']} x {p['num_views']} | {parts} | "
            f"{p['instrumented_ms']:.2f} | {p['step_ms']:.2f} | {p['images_per_s']:.0f} | {p['views_per_s']:.0f} |"
        )
    return lines


# ------------------------------------------------------------------------------------ reading
def reading(results: dict[str, Any], name: str) -> list[str]:
    """Plain sentences stating what the comparison's numbers show, including where they do not
    match the paper."""
    section = section_of(results, name)
    a = results["analysis"][name]
    lin = a["metrics"][PRIMARY]
    variants = results["comparisons"][name]["variants"]
    labels = [v["label"] for v in variants if lin[v["label"]]["at_time"]["mean"] is not None]
    if not labels:
        return ["- No evaluation results."]
    base = section.baseline
    t = a["equal_time_s"]
    best = max(labels, key=lambda lab: lin[lab]["at_time"]["mean"])
    start = lin[labels[0]]["start"]
    gain = 100 * (lin[best]["at_time"]["mean"] - start["mean"])
    out = [
        f"- At equal wall time ({t:g} s of training), {best} has the highest linear-probe accuracy "
        f"({pct(lin[best]['at_time'])} %); {base}: {pct(lin[base]['at_time'])} %. Before training the "
        f"encoder scores {pct(start)} % ({pct(a['metrics']['knn_top1'][labels[0]]['start'])} % kNN), so the "
        f"best run gained {gain:+.1f} points."
    ]
    knn = a["metrics"]["knn_top1"]
    best_knn = max(labels, key=lambda lab: knn[lab]["at_time"]["mean"])
    out.append(
        f"- kNN at equal wall time: {best_knn} is best ({pct(knn[best_knn]['at_time'])} %); "
        f"{base}: {pct(knn[base]['at_time'])} %."
    )
    best_ete = max(labels, key=lambda lab: lin[lab]["at_ete"]["mean"])
    out.append(
        f"- At equal ETE ({a['equal_ete']:.1f}, the most every run reached), {best_ete} is best "
        f"({pct(lin[best_ete]['at_ete'])} %); {base}: {pct(lin[base]['at_ete'])} %."
    )
    others = [lab for lab in labels if lab != base]
    reached = [lab for lab in others if lin[lab]["speedup"]["mean"] is not None]
    if reached:
        fastest = max(reached, key=lambda lab: lin[lab]["speedup"]["mean"])
        speed = lin[fastest]["speedup"]["mean"]
        detail = f"{ratio(lin[fastest]['speedup'])} in wall time, {ratio(lin[fastest]['ete_speedup'])} in ETE"
        if speed >= 1.0:
            out.append(f"- Fastest to reach {base}'s final linear-probe accuracy: {fastest}, speed-up {detail}.")
        else:
            out.append(
                f"- No variant reached {base}'s final linear-probe accuracy sooner than {base}; the closest, "
                f"{fastest}, needed {1 / speed:.2f}x its time (speed-up {detail})."
            )
    if others:
        knn_speeds = [f"{lab} {ratio(knn[lab]['speedup'], knn[lab]['reached'])} in wall time, "
                      f"{ratio(knn[lab]['ete_speedup'], knn[lab]['reached'])} in ETE" for lab in others]  # fmt: skip
        out.append(f"- Speed-up to {base}'s final kNN accuracy: {'; '.join(knn_speeds)}.")
    never = [f"{lab} ({lin[lab]['seeds'] - lin[lab]['reached']}/{lin[lab]['seeds']} seeds)" for lab in others
             if lin[lab]["reached"] < lin[lab]["seeds"]]  # fmt: skip
    if never:
        out.append(f"- Did not reach {base}'s final linear-probe accuracy within the budget: {', '.join(never)}.")
    out.append(_signal_line(results, knn, labels))
    out += _paper_check(section, lin, knn, a["runs"], labels)
    errors = {lab: run["errors"] for lab, run in a["runs"].items() if run["errors"]}
    for lab, errs in errors.items():
        out.append(f"- {lab}: {len(errs)} run(s) stopped early: {errs[0].splitlines()[0]}")
    return out


SIGNAL_POINTS = 3.0  # kNN points over both baselines that make a comparison worth reading (issue 11)


def _signal_line(results: dict[str, Any], knn: dict[str, Any], labels: Sequence[str]) -> str:
    """Whether the best run's final kNN beats the untrained encoder and raw pixels by ``SIGNAL_POINTS``:
    below that, the runs were too short for their differences to say much about the methods."""
    best = max(labels, key=lambda lab: knn[lab]["at_time"]["mean"])
    value, untrained = 100 * knn[best]["at_time"]["mean"], 100 * knn[labels[0]]["start"]["mean"]
    raw = results.get("baselines", {}).get("raw_pixels", {}).get("knn_top1")
    start = "the starting encoder" if results.get("baselines", {}).get("init") else "the untrained encoder"
    bars = {start: untrained, **({"raw pixels": 100 * raw} if raw is not None else {})}
    beaten = [name for name, bar in bars.items() if value >= bar + SIGNAL_POINTS]
    detail = ", ".join(f"{name} {bar:.1f} %" for name, bar in bars.items())
    if len(beaten) == len(bars):
        verdict = f"yes, it beats {' and '.join(bars)} by >= {SIGNAL_POINTS:g} points"
    else:
        missed = [name for name in bars if name not in beaten]
        verdict = (f"NO: it does not beat {' or '.join(missed)} by {SIGNAL_POINTS:g} points, so these runs are too "
                   "short for the comparisons here to say much about the methods")  # fmt: skip
    return f"- Training signal: the best final kNN is {best}'s {value:.1f} % ({detail}): {verdict}."


def _paper_check(
    section: Section, lin: dict[str, Any], knn: dict[str, Any], runs: dict[str, Any], labels: Sequence[str]
) -> list[str]:
    """Compare orderings (linear probe, as the paper; then kNN and end-of-run fine-tuning, each
    seed-paired) and claimed numbers with the paper's."""
    out = []
    pairs = [(w, b) for w, b in section.expected_pairs if w in labels and b in labels]
    if pairs:
        held = [(w, b) for w, b in pairs if lin[b]["at_time"]["mean"] > lin[w]["at_time"]["mean"]]
        broken = [f"{b} <= {w}" for w, b in pairs if (w, b) not in held]
        text = f"- Paper order ({section.paper.split(':')[0]}): {len(held)} of {len(pairs)} orderings hold here"
        out.append(text + (f"; NOT matching: {', '.join(broken)}." if broken else "."))
        out += [ordering_line(w, b, lin) for w, b in pairs]
        out += [ordering_line(w, b, knn, "kNN") for w, b in pairs]
        finetune = {lab: {"at_time_by_seed": run.get("finetune_by_seed", {})} for lab, run in runs.items()}
        out += [ordering_line(w, b, finetune, "fine-tune") for w, b in pairs
                if any(v is not None for v in finetune[w]["at_time_by_seed"].values())]  # fmt: skip
    for claim in section.claims:
        if claim.label in labels and section.baseline in labels:
            out.append(_claim_line(claim, section.baseline, lin))
    return out


def ordering_line(worse: str, better: str, metric: dict[str, Any], name: str = "") -> str:
    """One paper ordering at equal time in ``metric`` (named ``name`` in the line when given), with
    the 95 % CI of the seed-paired difference."""
    a, b = metric[worse]["at_time_by_seed"], metric[better]["at_time_by_seed"]
    label = f" ({name})" if name else ""
    diffs = [100 * (b[s] - a[s]) for s in a if a[s] is not None and b.get(s) is not None]
    stats = aggregate(diffs)
    if stats.mean is None:
        return f"  - {better} > {worse}{label}: no paired seeds"
    if stats.ci_low is None or stats.ci_high is None:
        return f"  - {better} > {worse}{label}: {stats.mean:+.1f} points (one seed, no confidence interval)"
    lo, hi = stats.ci_low, stats.ci_high
    verdict = "holds (95 % CI above 0)" if lo > 0 else "REVERSED (95 % CI below 0)" if hi < 0 else "not resolved (CI spans 0)"
    if no_spread(stats.std):  # every seed differs by exactly as much: a zero-width interval resolves nothing
        verdict = "the same on every seed (no spread: no CI)"
    mean = round(stats.mean, 1) + 0.0  # a mean of 0 is '+0.0', not '-0.0'
    return f"  - {better} > {worse}{label}: {mean:+.1f} points [{lo:+.1f}, {hi:+.1f}] over {stats.n} seeds: {verdict}"


def _claim_line(claim: Claim, base: str, lin: dict[str, Any]) -> str:
    """One sentence holding a measured number against the paper's range."""
    speedup = lin[claim.label]["speedup"]
    if claim.kind == "speedup":
        value = speedup["mean"]
        measured = ratio(speedup, lin[claim.label]["reached"])
        unit, paper = "x", f"{claim.low:g}x-{claim.high:g}x"
        subject = f"{claim.label}'s speed-up over {base}"
    else:
        value = 100 * (lin[claim.label]["at_time"]["mean"] - lin[base]["at_time"]["mean"])
        measured, unit, paper = f"{value:+.1f} points", "", f"+{claim.low:g} to +{claim.high:g} points"
        subject = f"{claim.label}'s linear-probe gain over {base} at equal time"
    if value is None and lin[claim.label]["reached"] == 0:
        verdict = "does NOT reproduce it (never reached)"
    elif value is None:
        verdict = "cannot be compared (the baseline did not improve on its start)"
    elif value >= claim.low:
        verdict = "matches or exceeds it"
    elif value > (1.0 if unit == "x" else 0.0):
        verdict = "goes the paper's way but is SMALLER"
    else:
        verdict = "does NOT reproduce it"
    low = speedup.get("ci_low")
    if claim.kind == "speedup" and value is not None and low is not None and low <= 1.0:
        verdict += ", but its 95 % CI includes 1x (no speed-up): not resolved"
    return f"- {subject}: {measured}; paper ({claim.source}): {paper}. Ours {verdict}."


# ------------------------------------------------------------------------------------- report
def departures(results: dict[str, Any], testbed: dict[str, Any]) -> list[str]:
    """What a benchmark set on the command line against its testbed's defaults (sections, seeds, ETE
    or time budget), so that the testbed's description is not read as this run's."""
    out = []
    for key in ("sections", "seeds"):
        ran, default = list(results.get(key) or []), list(testbed.get(key) or [])
        if ran and default and ran != default:
            out.append(f"{key} {', '.join(map(str, ran))} (testbed: {', '.join(map(str, default))})")
    ete, default_ete = results.get("ete"), testbed.get("ete")
    if ete != default_ete:
        run_words = f"{ete:g} ETE per run" if ete else f"a budget of {results['budget_s']:g} s per run"
        out.append(f"{run_words} (testbed: {f'{default_ete:g} ETE' if default_ete else 'a time budget'})")
    elif not ete and results.get("budget_s") != testbed.get("budget_s"):
        out.append(f"a budget of {results['budget_s']:g} s per run (testbed: {testbed.get('budget_s'):g} s)")
    return out


def header_lines(results: dict[str, Any]) -> list[str]:
    """The report's opening: command, machine, date and commit, testbed, schedule rule, evaluation
    protocol and the settings every run shares."""
    testbed = saved_testbed(results)
    m = results["machine"]
    ev = results.get("evaluation", {})
    length = f"{results['ete']:g} ETE per run" if results.get("ete") else f"training budget {results['budget_s']:g} s per run"
    sittings = results.get("sittings", [])
    lines = [
        "# dmjd efficiency benchmark",
        "",
        f"- Command: `{results['command'] or '(called from Python)'}`",
        f"- Machine: {machine_line(m)}; Python {m['python']}, torch {m['torch']}, dmjd {m['dmjd']}",
        f"- Date (UTC): {results['date']}; commit: `{results['commit']}`"
        + (f"; {len(sittings)} sittings, the last at {sittings[-1]['date']}" if len(sittings) > 1 else ""),
        f"- Testbed `{testbed['name']}`: {testbed['description']}; seeds {', '.join(map(str, results['seeds']))}; "
        f"{length}; whole benchmark {results.get('wall_s', 0) / 60:.1f} min",
        f"- Schedule rule: {results['schedule_rule']}",
    ]
    if changed := departures(results, testbed):
        lines.insert(-1, f"- This run departs from the testbed's defaults: {'; '.join(changed)}")
    if ev:  # a benchmark of the step profile alone evaluates nothing
        lines.append(
            f"- Evaluation: weighted kNN (k={ev.get('knn_k')}) and logistic-regression linear probe on frozen "
            f"{ev.get('pool') or 'class-token'} features of {ev.get('images_per_split') or 'all'} images per "
            "labelled split (train / test, seeded subsets); accuracies are top-1 on the test split, "
            "mean ± std over seeds; speed-ups geometric mean [95 % CI over seeds, taken on log ratios]; ETE = K x epochs; fine-tune: top-1 after "
            f"{ev.get('finetune_epochs') or 0} epochs of the small-data recipe (dmjd.eval.quick_finetune) on the "
            "same train split"
        )
    return [*lines, f"- Common settings (every run): `{' '.join(testbed['base'])}`", ""]


def section_intro(results: dict[str, Any], name: str) -> list[str]:
    """A comparison's heading, the paper's claim, each variant's settings and the baselines."""
    section = section_of(results, name)
    lines = [f"## {section.title}", "", f"Paper: {section.paper}", "", "Variant settings (on top of the common ones):", ""]
    lines += [f"- {v.label}: `{' '.join(v.overrides)}`" for v in section.variants]
    return [*lines, "", "Baselines:", "", *baseline_lines(results, name), ""]


def write_report(results: dict[str, Any], output_dir: str | Path) -> Path:
    """Write ``report.md`` and the convergence PNGs of every comparison into ``output_dir``."""
    out = Path(output_dir)
    lines = header_lines(results)
    for name in results["comparisons"]:
        section = section_of(results, name)
        lines += [*section_intro(results, name), *comparison_table(results, name), ""]
        for x in ("time", "ete"):
            png = plot_comparison(results, name, x, out / f"{name}_{x}.png")
            lines.append(f"![{section.title} against {AXES[x]}]({png.name})")
        lines += ["", "Reading:", "", *reading(results, name), ""]
    if "profile" in results:
        p = results["profile"]
        lines += [
            "## Step profile",
            "",
            f"Milliseconds per step over {p['steps']} steps after {p['warmup']} warm-up steps; parts are "
            "synchronised individually (on GPU), 'plain step' is the un-instrumented training step "
            "(data loading included) from which images/s and views/s are computed.",
            "",
            *profile_table(p),
            "",
        ]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
