"""Curves of one or more runs: losses and evaluations against training progress (the paper's Figs. 1, 5).

A pre-training run (``metrics.jsonl`` records ``kind="train"`` with ``loss``, ``loss_mim``,
``loss_vis``, ``ete``, ``time`` in seconds, and ``kind="eval"`` monitor records) gets three panels:
loss vs effective training epochs, loss vs wall-clock time (in s, min or h by the runs' length)
and accuracy vs ETE, where the monitor's records are lines, its raw-pixel baselines
(``pixels_*_top1``) horizontal reference lines, and the evaluations recorded in the run's
``evals.jsonl`` (``dmjd knn``, ``linprobe``, ``finetune`` of its checkpoints) points, one series
per metric, protocol and pooling. A
fine-tuning run (eval records with ``top1`` and ``val_loss``) gets its own two panels: top-1 and
loss (training, validation) vs epochs. Legends sit outside the axes, never on the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.figure

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from dmjd.engine.metrics import EVALS_FILE, read_metrics
from dmjd.errors import InputError
from dmjd.io.atomic import atomic_writer

LOSS_STYLES = {"loss": "-", "loss_mim": "--", "loss_vis": ":"}
BASELINE_PREFIX = "pixels_"  # the monitor's raw-pixel baselines, e.g. pixels_knn_top1
FIGURE_NAME = "curves.png"  # what pre-training writes into its run folder
MARKERS = "os^Dv<>p"
Records = list[dict[str, Any]]


def read_run(run_dir: str | Path) -> Records:
    """The metric records of a run folder.

    Raises:
        InputError: the folder has no ``metrics.jsonl`` or it holds no records.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise InputError(f"{run_dir} has no metrics.jsonl; pass run folders written by dmjd pretrain/finetune")
    records = read_metrics(path)
    if not records:
        raise InputError(f"{path} holds no metric records")
    return records


def read_evals(run_dir: str | Path) -> Records:
    """The evaluation records of a run folder's ``evals.jsonl`` (none when it has no such file)."""
    path = Path(run_dir) / EVALS_FILE
    return read_metrics(path) if path.is_file() else []


def is_finetune(records: Records) -> bool:
    """Whether the records are a fine-tuning run's (its evaluations report ``top1`` and ``val_loss``)."""
    return any(r.get("kind") == "eval" and "val_loss" in r for r in records)


def _series(records: Records, kind: str, x: str, y: str) -> tuple[list[float], list[float]]:
    """``(x, y)`` of the records of one kind that have both keys as numbers."""
    pts = [(r[x], r[y]) for r in records if r.get("kind") == kind and isinstance(r.get(x), (int, float))
           and isinstance(r.get(y), (int, float))]  # fmt: skip
    return [p[0] for p in pts], [p[1] for p in pts]


def accuracy_keys(records: Records) -> list[str]:
    """The accuracy metrics (keys ending in ``top1``) present in a run's eval records, the
    raw-pixel baselines (``baselines``) apart."""
    keys = {k for r in records if r.get("kind") == "eval" for k in r if k.endswith("top1")}
    return sorted(k for k in keys if not k.startswith(BASELINE_PREFIX))


def baselines(records: Records) -> dict[str, float]:
    """The raw-pixel baselines of a run's eval records (``pixels_knn_top1``, ...), the last value of
    each: they do not change with training, so they are reference levels, not curves."""
    return {k: v for r in records if r.get("kind") == "eval" for k, v in r.items()
            if k.startswith(BASELINE_PREFIX) and k.endswith("top1") and isinstance(v, (int, float))}  # fmt: skip


def evaluation_label(key: str, record: dict[str, Any]) -> str:
    """The series of a recorded evaluation's metric: ``key (protocol, pool P)``, e.g.
    ``knn_top1 (weighted-knn, pool avg)``, so that the poolings of one protocol stay apart."""
    tags = [str(record["protocol"])] if record.get("protocol") else []
    tags += [f"pool {record['pool']}"] if record.get("pool") else []
    return f"{key} ({', '.join(tags)})" if tags else key


def evaluation_points(evals: Records) -> dict[str, tuple[list[float], list[float]]]:
    """``label -> (ETE, accuracy)`` of the recorded evaluations, one label per metric, protocol and
    pooling (``evaluation_label``)."""
    points: dict[str, tuple[list[float], list[float]]] = {}
    for record in evals:
        if not isinstance(record.get("ete"), (int, float)):
            continue
        for key, value in record.items():
            if key.endswith("top1") and isinstance(value, (int, float)):
                label = evaluation_label(key, record)
                xs, ys = points.setdefault(label, ([], []))
                xs.append(record["ete"])
                ys.append(value)
    return points


def run_summary(records: Records, evals: Records | None = None) -> dict[str, Any]:
    """The last value of each curve of a run: loss terms, ETE, wall time, accuracies, raw-pixel
    baselines, and the last result of each recorded evaluation (per protocol and pooling)."""
    summary: dict[str, Any] = {}
    for key in (*LOSS_STYLES, "ete", "time"):
        _, ys = _series(records, "train", "step", key)
        if ys:
            summary[f"final_{key}"] = ys[-1]
    for key in accuracy_keys(records) + ["val_loss"]:
        _, ys = _series(records, "eval", "epoch", key)
        if ys:
            summary[key] = ys[-1]
    summary.update(baselines(records))
    for label, (_, ys) in evaluation_points(evals or []).items():
        summary[f"evaluation {label}"] = ys[-1]
    return summary


def time_unit(seconds: float) -> tuple[str, float]:
    """The unit of a time axis spanning ``seconds``: ``(name, seconds per unit)`` -- s below 2 min,
    min below 2 h, else h."""
    if seconds < 120:
        return "s", 1.0
    return ("min", 60.0) if seconds < 7200 else ("h", 3600.0)


def _legend(ax: plt.Axes) -> None:
    """The legend below the axes, outside the data."""
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)


def _draw_pretraining(axes: Sequence[plt.Axes], runs: list[tuple[str, Records, Records]], unit: tuple[str, float]) -> None:
    ax_ete, ax_time, ax_acc = axes
    colors = plt.get_cmap("tab10")
    any_acc = False
    for i, (name, records, evals) in enumerate(runs):
        color = colors(i % 10)
        for key, style in LOSS_STYLES.items():
            label = name if key == "loss" else f"{name} {key}"
            xs, ys = _series(records, "train", "ete", key)
            if xs:
                ax_ete.plot(xs, ys, style, color=color, label=label)
            seconds, ys = _series(records, "train", "time", key)
            if seconds:
                ax_time.plot([s / unit[1] for s in seconds], ys, style, color=color, label=label)
        for j, key in enumerate(accuracy_keys(records)):
            xs, ys = _series(records, "eval", "ete", key)
            if xs:
                ax_acc.plot(xs, [100 * y for y in ys], MARKERS[j % 8] + "-", ms=3, color=color, label=f"{name} {key}")
                any_acc = True
        for key, value in baselines(records).items():
            ax_acc.axhline(100 * value, ls=(0, (1, 2)), lw=1, color=color,
                           label=f"{name} raw pixels {key.removeprefix(BASELINE_PREFIX)}")  # fmt: skip
            any_acc = True
        for j, (label, (xs, ys)) in enumerate(evaluation_points(evals).items()):
            ax_acc.plot(xs, [100 * y for y in ys], MARKERS[j % 8], ms=7, mfc="none", color=color, label=f"{name} {label}")
            any_acc = True
    ax_ete.set(xlabel="effective training epochs (ETE = K x epochs)", ylabel="loss", title="Pre-training loss vs ETE")
    ax_time.set(xlabel=f"wall-clock time ({unit[0]})", ylabel="loss", title="Pre-training loss vs time")
    ax_acc.set(xlabel="effective training epochs (ETE)", ylabel="top-1 (%)",
               title="Accuracy: monitor (lines), raw pixels (dotted), evaluations (points)")  # fmt: skip
    if not any_acc:
        ax_acc.text(0.5, 0.5, "no accuracy recorded\n(monitor.interval, dmjd knn / linprobe)", ha="center",
                    va="center", transform=ax_acc.transAxes)  # fmt: skip


def _draw_finetuning(axes: Sequence[plt.Axes], runs: list[tuple[str, Records, Records]]) -> None:
    ax_acc, ax_loss = axes
    colors = plt.get_cmap("tab10")
    for i, (name, records, _) in enumerate(runs):
        color = colors(i % 10)
        xs, ys = _series(records, "eval", "epoch", "top1")
        ax_acc.plot(xs, [100 * y for y in ys], "o-", ms=3, color=color, label=name)
        xs, ys = _series(records, "epoch", "epoch", "loss")
        ax_loss.plot([x + 1 for x in xs], ys, "-", color=color, label=f"{name} training")
        xs, ys = _series(records, "eval", "epoch", "val_loss")
        ax_loss.plot(xs, ys, "--", color=color, label=f"{name} validation")
    ax_acc.set(xlabel="epochs", ylabel="top-1 (%)", title="Fine-tuning: validation top-1")
    ax_loss.set(xlabel="epochs", ylabel="cross-entropy", title="Fine-tuning: loss")


def curves_figure(run_dirs: Sequence[str | Path], labels: Sequence[str] | None = None) -> matplotlib.figure.Figure:
    """The curves figure: a row of pre-training panels (loss vs ETE, loss vs time, accuracy vs
    ETE) when any run pre-trains, a row of fine-tuning panels (top-1, loss vs epochs) when any
    fine-tunes.

    Raises:
        InputError: a folder without metrics, or ``labels`` of another length than ``run_dirs``.
    """
    if labels is not None and len(labels) != len(run_dirs):
        raise InputError(f"{len(labels)} labels for {len(run_dirs)} runs")
    names = list(labels) if labels is not None else [Path(d).resolve().name for d in run_dirs]
    runs = [(name, read_run(d), read_evals(d)) for name, d in zip(names, run_dirs, strict=True)]
    pretraining = [run for run in runs if not is_finetune(run[1])]
    finetuning = [run for run in runs if is_finetune(run[1])]
    rows = [row for row in (pretraining, finetuning) if row]
    fig, grid = plt.subplots(len(rows), 3, figsize=(15, 4.8 * len(rows)), squeeze=False)
    if pretraining:
        longest = max((r.get("time", 0) for _, records, _ in pretraining for r in records), default=0)
        _draw_pretraining(grid[0], pretraining, time_unit(float(longest)))
    if finetuning:
        _draw_finetuning(grid[-1][:2], finetuning)
        grid[-1][2].set_axis_off()
    for ax in grid.flat:
        if ax.axison:
            _legend(ax)
    fig.tight_layout()
    return fig


def default_figure_path(run_dirs: Sequence[str | Path]) -> Path:
    """Where ``dmjd plot`` writes without ``--output-dir`` / ``--output``: the run's own
    ``curves.png`` (redrawn with its evaluations) for one run; for several, a figure in the first
    run's folder named after the others, ``A/curves-vs-B-C.png``, which never replaces a run's
    own ``curves.png``."""
    first = Path(run_dirs[0])
    if len(run_dirs) == 1:
        return first / FIGURE_NAME
    others = "-".join(Path(d).resolve().name for d in run_dirs[1:])
    return first / f"{Path(FIGURE_NAME).stem}-vs-{others}.png"


def save_curves_figure(run_dirs: Sequence[str | Path], path: str | Path, labels: Sequence[str] | None = None) -> Path:
    """``curves_figure`` of the runs as a PNG at ``path``.

    Raises:
        InputError: as ``curves_figure``.
    """
    return save_figure(curves_figure(run_dirs, labels), path, dpi=120, bbox_inches="tight")


def save_figure(fig: matplotlib.figure.Figure, path: str | Path, **savefig: Any) -> Path:
    """Write ``fig`` to ``path`` atomically (its format from the suffix) and close it; ``savefig``
    goes to ``Figure.savefig`` (dpi, ...)."""
    path = Path(path)
    with atomic_writer(path) as f:
        fig.savefig(f, format=path.suffix.lstrip(".") or "png", **savefig)
    plt.close(fig)
    return path
