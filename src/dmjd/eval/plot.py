"""Convergence curves of one or more runs from their ``metrics.jsonl`` (the paper's Figs. 1 and 5).

Records used: ``kind="train"`` (``loss``, ``loss_mim``, ``loss_vis``, ``ete``, ``time`` in seconds)
and ``kind="eval"`` (``epoch`` = epochs completed, and any ``*top1`` accuracy such as ``knn_top1``,
``linprobe_top1`` or a fine-tuning ``top1``, as fractions).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dmjd.engine.metrics import read_metrics  # noqa: E402

LOSS_STYLES = {"loss": "-", "loss_mim": "--", "loss_vis": ":"}


def read_run(run_dir: str | Path) -> list[dict[str, Any]]:
    """The metric records of a run folder.

    Raises:
        ValueError: the folder has no ``metrics.jsonl`` or it holds no records.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ValueError(f"{run_dir} has no metrics.jsonl; pass run folders written by dmjd pretrain/finetune")
    records = read_metrics(path)
    if not records:
        raise ValueError(f"{path} holds no metric records")
    return records


def _series(records: list[dict[str, Any]], kind: str, x: str, y: str) -> tuple[list[float], list[float]]:
    """``(x, y)`` of the records of one kind that have both keys as numbers."""
    pts = [(r[x], r[y]) for r in records if r.get("kind") == kind and isinstance(r.get(x), (int, float))
           and isinstance(r.get(y), (int, float))]  # fmt: skip
    return [p[0] for p in pts], [p[1] for p in pts]


def accuracy_keys(records: list[dict[str, Any]]) -> list[str]:
    """The accuracy metrics (keys ending in ``top1``) present in a run's eval records."""
    return sorted({k for r in records if r.get("kind") == "eval" for k in r if k.endswith("top1")})


def run_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The last value of each curve of a run: loss terms, ETE, wall time and accuracies."""
    summary: dict[str, Any] = {}
    for key in (*LOSS_STYLES, "ete", "time"):
        _, ys = _series(records, "train", "step", key)
        if ys:
            summary[f"final_{key}"] = ys[-1]
    for key in accuracy_keys(records):
        _, ys = _series(records, "eval", "epoch", key)
        if ys:
            summary[key] = ys[-1]
    return summary


def save_curves_figure(run_dirs: Sequence[str | Path], path: str | Path, labels: Sequence[str] | None = None) -> Path:
    """One PNG, three panels: loss vs ETE, loss vs wall-clock time, accuracy vs epochs.

    Raises:
        ValueError: a folder without metrics, or ``labels`` of another length than ``run_dirs``.
    """
    if labels is not None and len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} runs")
    names = list(labels) if labels is not None else [Path(d).resolve().name for d in run_dirs]
    runs = [read_run(d) for d in run_dirs]
    fig, (ax_ete, ax_time, ax_acc) = plt.subplots(1, 3, figsize=(14, 4))
    colors = plt.get_cmap("tab10")
    any_acc = False
    for i, (name, records) in enumerate(zip(names, runs, strict=True)):
        color = colors(i % 10)
        for key, style in LOSS_STYLES.items():
            label = name if key == "loss" else f"{name} {key}"
            xs, ys = _series(records, "train", "ete", key)
            if xs:
                ax_ete.plot(xs, ys, style, color=color, label=label)
            seconds, ys = _series(records, "train", "time", key)
            if seconds:
                ax_time.plot([s / 3600 for s in seconds], ys, style, color=color, label=label)
        for j, key in enumerate(accuracy_keys(records)):
            xs, ys = _series(records, "eval", "epoch", key)
            if xs:
                ax_acc.plot(xs, [100 * y for y in ys], "os^Dv"[j % 5] + "-", ms=3, color=color, label=f"{name} {key}")
                any_acc = True
    ax_ete.set(xlabel="ETE (effective training epochs)", ylabel="loss", title="loss vs ETE")
    ax_time.set(xlabel="wall-clock time (hours)", ylabel="loss", title="loss vs time")
    ax_acc.set(xlabel="epochs", ylabel="top-1 (%)", title="probe / validation accuracy")
    if not any_acc:
        ax_acc.text(0.5, 0.5, "no accuracy logged", ha="center", va="center", transform=ax_acc.transAxes)
    for ax in (ax_ete, ax_time, ax_acc):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
