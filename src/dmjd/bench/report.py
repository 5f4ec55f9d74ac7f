"""The benchmark's report: markdown tables, convergence figures and a plain reading, all generated
from ``results.json`` (no number in the report is typed by hand)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from dmjd.bench.analysis import Curve, mean_curve  # noqa: E402
from dmjd.bench.presets import SECTIONS, Claim, Section  # noqa: E402

METRIC_NAMES = {"linprobe_top1": "linear probe", "knn_top1": "kNN"}
PRIMARY = "linprobe_top1"
AXES = {"time": "training time (s)", "ete": "effective training epochs (ETE)"}


def pct(stats: dict[str, Any]) -> str:
    """``mean ± std`` of an accuracy fraction, in percent ('-' when undefined)."""
    if stats["mean"] is None:
        return "-"
    text = f"{100 * stats['mean']:.1f}"
    return text + (f" ± {100 * stats['std']:.1f}" if stats["std"] is not None else "")


def ratio(stats: dict[str, Any]) -> str:
    """``mean ± std x`` of a speed-up, with ``(n/total)`` when some seeds never reached the level."""
    if stats["mean"] is None:
        return f"not reached (0/{stats['total']})"
    text = f"{stats['mean']:.2f}x" + (f" ± {stats['std']:.2f}" if stats["std"] is not None else "")
    return text + (f" ({stats['n']}/{stats['total']})" if stats["n"] < stats["total"] else "")


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
    fig, axes = plt.subplots(1, len(METRIC_NAMES), figsize=(5.2 * len(METRIC_NAMES), 3.8), squeeze=False)
    for ax, (metric, metric_name) in zip(axes[0], METRIC_NAMES.items()):
        for variant in comparison["variants"]:
            curves = _run_curves(results, variant["runs"], x, metric)
            if not curves:
                continue
            grid = np.linspace(0.0, max(c.end for c in curves), 200)
            mean, low, high = mean_curve(curves, grid)
            (line,) = ax.plot(grid, 100 * mean, label=variant["label"])
            ax.fill_between(grid, 100 * low, 100 * high, color=line.get_color(), alpha=0.15, linewidth=0)
            for c in curves:
                ax.plot(c.x, 100 * np.asarray(c.y), "o", color=line.get_color(), markersize=2.5)
        ax.set_xlabel(AXES[x])
        ax.set_ylabel(f"{metric_name} top-1 (%)")
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
        f"ETE to {base} final | speed-up (ETE) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for variant in results["comparisons"][name]["variants"]:
        label = variant["label"]
        run, lin, knn = a["runs"][label], a["metrics"][PRIMARY][label], a["metrics"]["knn_top1"][label]
        if run["num_views"] is None:
            continue
        lines.append(
            f"| {label} | {run['num_views']} | {run['pred_ratio']:.2f} | {number(run['scheduled_epochs'], 0)} | "
            f"{number(run['ete'])} | {number(run['time_s'])} | {pct(lin['at_time'])} | {pct(knn['at_time'])} | "
            f"{pct(lin['at_ete'])} | {pct(knn['at_ete'])} | {seconds_to_level(lin['time_to_level'])} | "
            f"{ratio(lin['speedup'])} | {seconds_to_level(lin['ete_to_level'])} | {ratio(lin['ete_speedup'])} |"
        )
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
            f"| {label} | {p['device']} | {p['batch_size']} x {p['num_views']} | {parts} | {p['instrumented_ms']:.2f} | "
            f"{p['step_ms']:.2f} | {p['images_per_s']:.0f} | {p['views_per_s']:.0f} |"
        )
    return lines


# ------------------------------------------------------------------------------------ reading
def _mean(stats: dict[str, Any]) -> float | None:
    return stats["mean"]


def reading(results: dict[str, Any], name: str) -> list[str]:
    """Plain sentences stating what the comparison's numbers show, including where they do not
    match the paper."""
    section: Section = SECTIONS[name]
    a = results["analysis"][name]
    lin = a["metrics"][PRIMARY]
    labels = [v["label"] for v in results["comparisons"][name]["variants"] if _mean(lin[v["label"]]["at_time"]) is not None]
    if not labels:
        return ["- No evaluation results."]
    base = section.baseline
    t = a["equal_time_s"]
    best = max(labels, key=lambda lab: lin[lab]["at_time"]["mean"])
    out = [
        f"- At equal wall time ({t:g} s of training), {best} has the highest linear-probe accuracy "
        f"({pct(lin[best]['at_time'])} %); {base}: {pct(lin[base]['at_time'])} %."
    ]
    best_ete = max(labels, key=lambda lab: lin[lab]["at_ete"]["mean"])
    out.append(
        f"- At equal ETE ({a['equal_ete']:.1f}, the most every run reached), {best_ete} is best "
        f"({pct(lin[best_ete]['at_ete'])} %); {base}: {pct(lin[base]['at_ete'])} %."
    )
    others = [lab for lab in labels if lab != base]
    reached = [lab for lab in others if lin[lab]["speedup"]["mean"] is not None]
    if reached:
        fastest = max(reached, key=lambda lab: lin[lab]["speedup"]["mean"])
        out.append(
            f"- Fastest to reach {base}'s final linear-probe accuracy: {fastest}, speed-up "
            f"{ratio(lin[fastest]['speedup'])} in wall time, {ratio(lin[fastest]['ete_speedup'])} in ETE."
        )
    never = [f"{lab} ({lin[lab]['seeds'] - lin[lab]['reached']}/{lin[lab]['seeds']} seeds)" for lab in others
             if lin[lab]["reached"] < lin[lab]["seeds"]]  # fmt: skip
    if never:
        out.append(f"- Did not reach {base}'s final linear-probe accuracy within the budget: {', '.join(never)}.")
    out += _paper_check(section, lin, labels)
    errors = {lab: run["errors"] for lab, run in a["runs"].items() if run["errors"]}
    for lab, errs in errors.items():
        out.append(f"- {lab}: {len(errs)} run(s) stopped early: {errs[0].splitlines()[0]}")
    return out


def _paper_check(section: Section, lin: dict[str, Any], labels: Sequence[str]) -> list[str]:
    """Compare orderings and claimed numbers with the paper's."""
    out = []
    pairs = [(w, b) for w, b in section.expected_pairs if w in labels and b in labels]
    if pairs:
        held = [(w, b) for w, b in pairs if lin[b]["at_time"]["mean"] > lin[w]["at_time"]["mean"]]
        broken = [f"{b} <= {w}" for w, b in pairs if (w, b) not in held]
        text = f"- Paper order ({section.paper.split(':')[0]}): {len(held)} of {len(pairs)} orderings hold here"
        out.append(text + (f"; NOT matching: {', '.join(broken)}." if broken else "."))
    for claim in section.claims:
        if claim.label in labels:
            out.append(_claim_line(claim, section.baseline, lin))
    return out


def _claim_line(claim: Claim, base: str, lin: dict[str, Any]) -> str:
    """One sentence holding a measured number against the paper's range."""
    if claim.kind == "speedup":
        value = lin[claim.label]["speedup"]["mean"]
        measured = ratio(lin[claim.label]["speedup"])
        unit, paper = "x", f"{claim.low:g}x-{claim.high:g}x"
        subject = f"{claim.label}'s speed-up over {base}"
    else:
        value = 100 * (lin[claim.label]["at_time"]["mean"] - lin[base]["at_time"]["mean"])
        measured, unit, paper = f"{value:+.1f} points", "", f"+{claim.low:g} to +{claim.high:g} points"
        subject = f"{claim.label}'s linear-probe gain over {base} at equal time"
    if value is None:
        verdict = "does NOT reproduce it (never reached)"
    elif value >= claim.low:
        verdict = "matches or exceeds it"
    elif value > (1.0 if unit == "x" else 0.0):
        verdict = "goes the paper's way but is SMALLER"
    else:
        verdict = "does NOT reproduce it"
    return f"- {subject}: {measured}; paper ({claim.source}): {paper}. Ours {verdict}."


# ------------------------------------------------------------------------------------- report
def write_report(results: dict[str, Any], output_dir: str | Path) -> Path:
    """Write ``report.md`` and the convergence PNGs of every comparison into ``output_dir``."""
    out = Path(output_dir)
    preset = results["preset"]
    m = results["machine"]
    lines = [
        "# dmjd efficiency benchmark",
        "",
        f"- Command: `{results['command'] or '(called from Python)'}`",
        f"- Machine: {m['device']}; CPU {m['cpu']} ({m['cpu_count']} cores, {m['torch_threads']} torch threads); "
        f"Python {m['python']}, torch {m['torch']}, dmjd {m['dmjd']}",
        f"- Date (UTC): {results['date']}; commit: `{results['commit']}`",
        f"- Preset `{preset['name']}`: {preset['description']}; seeds {', '.join(map(str, results['seeds']))}; "
        f"training budget {results['budget_s']:g} s per run",
        f"- Schedule rule: {results['schedule_rule']}",
        f"- Evaluation: weighted kNN (k=20) and logistic-regression linear probe on frozen features of "
        f"{preset['eval_images'] or 'all'} images per labelled split (train / test); "
        "accuracies are top-1 on the test split, mean ± std over seeds",
        f"- Common settings (every run): `{' '.join(preset['base'])}`",
        "",
    ]
    for name in results["comparisons"]:
        section = SECTIONS[name]
        lines += [f"## {section.title}", "", f"Paper: {section.paper}", ""]
        lines += ["Variant settings (on top of the common ones):", ""]
        lines += [f"- {v.label}: `{' '.join(v.overrides)}`" for v in section.variants]
        lines += ["", *comparison_table(results, name), ""]
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
