"""Epochs read the same in every output of a run: the progress bar, log.txt, metrics.jsonl, summary.json
and the resume message. The convention (docs/reliability.md): a record's ``epoch`` is the 1-based epoch
it belongs to, as in ``epoch 3/4``; summary.json's ``epochs`` is the epochs trained, a fraction when
the last one was cut (2.375 = two epochs and 3 of the third's 8 steps, logged ``epoch 3/N stopped``)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from conftest import tiny_config
from dmjd.engine import Pretrainer, run_report
from dmjd.engine.metrics import read_metrics
from test_budget import fake_time


@pytest.fixture
def bars(monkeypatch) -> list[str]:
    """The description of every progress bar the runs open."""
    descs: list[str] = []
    real = run_report.tqdm

    def spy(*args, **kwargs):
        descs.append(kwargs["desc"])
        return real(*args, **kwargs)

    monkeypatch.setattr(run_report, "tqdm", spy)
    fake_time(monkeypatch, 0.05)  # a budgeted run plans the same every time
    return descs


def outputs(folder: Path) -> tuple[list[str], list[dict], dict]:
    """The epoch lines of log.txt, the records of metrics.jsonl and summary.json."""
    log = [line for line in (folder / "log.txt").read_text().splitlines() if re.match(r"dmjd: epoch \d", line)]
    return log, read_metrics(folder / "metrics.jsonl"), json.loads((folder / "summary.json").read_text())


def check_agree(folder: Path, bars: list[str], trainer: Pretrainer) -> float:
    """Every output of the run in ``folder`` names its last epoch alike; returns summary's ``epochs``."""
    log, records, summary = outputs(folder)
    steps_per_epoch = trainer.steps_per_epoch
    epochs = summary["epochs"]
    assert epochs == round(summary["steps"] / steps_per_epoch, 3)  # no accumulation: one micro-step per step
    last = math.ceil(epochs)  # the 1-based epoch the run ended in (or finished)
    n = trainer.epochs_known
    train, closing = [r for r in records if r["kind"] == "train"], [r for r in records if r["kind"] == "epoch"]
    cut = not closing[-1].get("complete", True)
    assert cut == (epochs != last)
    assert log[-1].startswith(f"dmjd: epoch {last}/{n} " + (f"stopped at step {summary['steps']}" if cut else "done"))
    assert train[-1]["epoch"] == closing[-1]["epoch"] == last
    assert {r["epoch"] for r in train} == set(range(1, last + 1))  # 1-based, as the log's
    assert bars[-1] in (f"epoch {last}/{n}", f"epoch {last}")  # no '/N' while a budget is still being planned
    for record in train:  # each train record's epoch holds its step
        assert (record["epoch"] - 1) * steps_per_epoch < record["step"] <= record["epoch"] * steps_per_epoch
    return epochs


def test_epochs_read_the_same_in_all_five_outputs_of_a_cut_resumed_and_finished_run(tmp_path, bars, capsys):
    keys = ("train.budget=6s", "train.budget_measure_steps=4", "train.log_interval=1")
    first = Pretrainer(tiny_config(*keys, "train.max_time_s=1.7"), tmp_path)  # mid-epoch (the fake clock ticks per read)
    assert first.fit()["stopped_by"] == "time budget"
    cut = check_agree(tmp_path, bars, first)
    assert cut != int(cut)  # stopped mid-epoch: a fraction
    resumed = Pretrainer(tiny_config(*keys), tmp_path, resume="auto")
    opened = len(bars)
    summary = resumed.fit()
    assert bars[opened] == f"epoch {math.ceil(cut)}/{resumed.epochs_known}"  # the cut epoch goes on under its number
    assert summary["stopped_by"] == "budget plan"
    done = check_agree(tmp_path, bars, resumed)
    capsys.readouterr()
    finished = Pretrainer(tiny_config(*keys), tmp_path, resume="auto")
    assert finished.fit()["epochs"] == done
    assert f"has finished its {done:g} epochs ({summary['steps']:,} steps, stopped by budget plan)" in capsys.readouterr().out
