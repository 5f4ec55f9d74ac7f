"""The report of a fixed-ETE benchmark (``dmjd bench --ete E``): accuracy at equal ETE, the curve on
the ETE grid, and each pair's differences and ETE speed-up with its verdict, all from
``results.json`` (``dmjd.bench.equal_ete``'s analysis)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dmjd.bench.analysis import difference_verdict
from dmjd.bench.equal_ete import ratio_verdict
from dmjd.bench.report import (
    AXES,
    PRIMARY,
    header_lines,
    number,
    pct,
    plot_comparison,
    ratio,
    section_intro,
    section_of,
    write_report,
)

METRIC_WORDS = {"linprobe_top1": "linear", "knn_top1": "kNN"}


def ete_table(results: dict[str, Any], name: str) -> list[str]:
    """Per variant: views, prediction rate, epochs, accuracy at the end (= at equal ETE), fine-tuning
    and the training time it took (for the record: the time is not what is compared)."""
    a = results["analysis"][name]
    e = a["equal_ete"]
    head = f"| variant | K | m_pred | epochs | linear @ ETE {e:g} | kNN @ ETE {e:g} | fine-tune | train s |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for variant in results["comparisons"][name]["variants"]:
        label = variant["label"]
        run = a["runs"][label]
        if run["num_views"] is None:
            continue
        lin, knn = a["metrics"][PRIMARY][label], a["metrics"]["knn_top1"][label]
        lines.append(
            f"| {label} | {run['num_views']} | {run['pred_ratio']:.2f} | {number(run['epochs'], 1)} | "
            f"{pct(lin['at_end'])} | {pct(knn['at_end'])} | {pct(run['finetune'])} | {number(run['time_s'], 0)} |"
        )
    return lines


def curve_table(results: dict[str, Any], name: str, metric: str = PRIMARY) -> list[str]:
    """``metric`` (mean over seeds) of every variant at each ETE of the evaluation grid."""
    a = results["analysis"][name]
    labels = [v["label"] for v in results["comparisons"][name]["variants"] if a["metrics"][metric][v["label"]]["seeds"]]
    lines = [f"| ETE | {' | '.join(labels)} |", "|" + "---|" * (len(labels) + 1)]
    for x in a["grid"]:
        cells = [pct(a["metrics"][metric][label]["at_grid"][f"{x:g}"]) for label in labels]
        lines.append(f"| {x:g} | {' | '.join(cells)} |")
    return lines


def _diff(stats: dict[str, Any]) -> str:
    if stats["mean"] is None:
        return "-"
    if stats["ci_low"] is None:
        return f"{stats['mean']:+.1f}"
    return f"{stats['mean']:+.1f} [{stats['ci_low']:+.1f}, {stats['ci_high']:+.1f}]"


def pair_lines(results: dict[str, Any], name: str) -> list[str]:
    """One line per pair: seed-paired differences at equal ETE with their verdicts, and the ETE
    ``better`` needed to reach ``worse``'s final linear-probe accuracy."""
    a = results["analysis"][name]
    e = a["equal_ete"]
    lines = []
    for p in a["pairs"]:
        worse, better = p["worse"], p["better"]
        if not p[PRIMARY]["seeds"]:
            continue  # neither has a finished run with the other's seed yet (a study in progress)
        diffs = [f"{METRIC_WORDS.get(m, m)} {_diff(p[m]['diff_at_end'])} ({difference_verdict(p[m]['diff_at_end'])})"
                 for m in results["metrics"]]  # fmt: skip
        diffs.append(f"fine-tune {_diff(p['finetune'])} ({difference_verdict(p['finetune'])})")
        lin = p[PRIMARY]
        reach = [x for x in lin["better_ete_to_level"].values() if x is not None]
        at = f"at ETE {sum(reach) / len(reach):.1f} on average, " if reach else ""
        speed = ratio(lin["ete_speedup"], lin["reached"])
        if lin["ete_speedup"]["mean"] is not None:
            speed += f": {ratio_verdict(lin['ete_speedup'], lin['reached'], lin['seeds'])}"
        lines.append(
            f"- {better} - {worse} at ETE {e:g}: {'; '.join(diffs)}. {better} reached {worse}'s final linear probe "
            f"{at}in {lin['reached']}/{lin['seeds']} seeds; ETE speed-up {speed}"
        )
    return lines


def write_ete_report(results: dict[str, Any], output_dir: str | Path) -> Path:
    """Write ``report.md`` and the accuracy-against-ETE figure of every comparison into ``output_dir``."""
    out = Path(output_dir)
    lines = header_lines(results)
    for name in results["comparisons"]:
        section = section_of(results, name)
        lines += [*section_intro(results, name), *ete_table(results, name), ""]
        lines += ["Linear probe (mean over seeds) on the ETE grid:", "", *curve_table(results, name), ""]
        png = plot_comparison(results, name, "ete", out / f"{name}_ete.png")
        lines += [f"![{section.title} against {AXES['ete']}]({png.name})", ""]
        lines += ["Pairs at equal ETE (seed-paired differences in points, 95 % CI; verdicts on the CI):", ""]
        lines += [*pair_lines(results, name), ""]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_benchmark_report(results: dict[str, Any], output_dir: str | Path) -> Path:
    """The report a benchmark's results call for: at equal ETE for a fixed-ETE benchmark, else at equal time."""
    return (write_ete_report if results.get("ete") else write_report)(results, output_dir)
