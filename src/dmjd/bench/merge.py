"""Merge efficiency-benchmark outputs that differ only in their seeds (e.g. a seed run later), so
that one analysis and report see every seed: ``dmjd bench --merge DIR DIR ... --output-dir OUT``."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from dmjd.bench.testbeds import saved_testbed

# What must be equal for runs of different outputs to be compared as seeds of one benchmark.
MUST_MATCH = ("benchmark", "machine", "testbed", "sections", "budget_s", "data_path", "schedule_rule", "evaluation")
# Testbed fields that document a run but do not change it: its wording, and the default seeds that
# ``--seeds`` replaced.
_TESTBED_PROSE = ("description", "seeds")


def _current(part: dict[str, Any]) -> dict[str, Any]:
    """``part`` with its testbed under ``testbed`` (outputs written before the rename say ``preset``)."""
    out = {k: v for k, v in part.items() if k != "preset"}
    out["testbed"] = saved_testbed(part)
    return out


def _setting(part: dict[str, Any], key: str) -> Any:
    """``part[key]`` as far as it decides the runs (a testbed without ``_TESTBED_PROSE``)."""
    value = part.get(key)
    if key == "testbed" and isinstance(value, dict):
        return {k: v for k, v in value.items() if k not in _TESTBED_PROSE}
    return value


def merge_results(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One results dict holding the runs of every part (without ``analysis``: recompute it).

    The merged ``command``, ``date`` and ``commit`` list each part's; ``wall_s`` is their sum;
    ``baselines`` are the first part's (raw pixels are the same splits in every part); ``parts``
    keeps each part's command, date, commit, seeds, wall time and baselines.

    Raises:
        ValueError: fewer than two parts, a setting of ``MUST_MATCH`` differs (a testbed's
            description and default seeds may), a seed appears in two parts, or the parts compare
            different variants.
    """
    if len(parts) < 2:
        raise ValueError("merging needs at least two benchmark outputs")
    parts = [_current(part) for part in parts]
    first = parts[0]
    for i, part in enumerate(parts[1:], 2):
        for key in MUST_MATCH:
            if _setting(part, key) != _setting(first, key):
                raise ValueError(f"cannot merge: output {i} differs from output 1 in {key!r}")
    seen: set[int] = set()
    for i, part in enumerate(parts, 1):
        overlap = seen & set(part["seeds"])
        if overlap:
            raise ValueError(f"cannot merge: seed(s) {sorted(overlap)} of output {i} are already in an earlier output")
        seen |= set(part["seeds"])
    merged = copy.deepcopy({k: v for k, v in first.items() if k != "analysis"})
    for part in parts[1:]:
        merged["runs"].update(copy.deepcopy(part["runs"]))
        for name, comparison in merged["comparisons"].items():
            theirs = {v["label"]: v["runs"] for v in part["comparisons"][name]["variants"]}
            if set(theirs) != {v["label"] for v in comparison["variants"]}:
                raise ValueError(f"cannot merge: comparison {name!r} has different variants in the outputs")
            for variant in comparison["variants"]:
                variant["runs"].update(theirs[variant["label"]])
    merged["seeds"] = sorted(seen)
    merged["wall_s"] = sum(part.get("wall_s", 0.0) for part in parts)
    for key in ("command", "date", "commit"):
        merged[key] = "; ".join(dict.fromkeys(str(part.get(key)) for part in parts))
    merged["parts"] = [
        {k: part.get(k) for k in ("command", "date", "commit", "seeds", "wall_s", "baselines")} for part in parts
    ]
    return merged
