"""``dmjd bench``: the efficiency benchmark and step profile from the command line (a thin layer
over ``dmjd.bench.efficiency``)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from dmjd.bench.presets import PRESETS, SECTION_NAMES
from dmjd.errors import InputError


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _sections(text: str) -> list[str]:
    names = _csv(text)
    unknown = [name for name in names if name not in SECTION_NAMES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTION_NAMES)}")
    return names


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes comma-separated integers, got {text!r}") from None


def register_bench_command(subparsers: argparse._SubParsersAction) -> None:
    """Add ``dmjd bench`` to the ``dmjd`` command's subparsers."""
    presets = "; ".join(f"{p.name}: {p.description} ({p.budget_s:g} s per run)" for p in PRESETS.values())
    p = subparsers.add_parser(
        "bench",
        help="efficiency benchmark: MAE vs +DM vs +JD vs DMJD at equal wall time (and ablations, step profile)",
        description=(
            "Pre-train the paper's configurations side by side with the same wall-clock budget, evaluate "
            "them periodically (kNN + linear probe) and report accuracy at equal time and ETE, speed-ups "
            f"and a step profile. Presets: {presets}."
        ),
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="machine preset (default cpu)")
    p.add_argument("--output-dir", required=True, help="receives runs/, results.json, report.md and PNG figures")
    p.add_argument("--sections", type=_sections, default=None,
                   help=f"comma-separated, from {','.join(SECTION_NAMES)} (default: the preset's)")  # fmt: skip
    p.add_argument("--seeds", type=_seeds, default=None, help="comma-separated seeds (default: the preset's)")
    p.add_argument("--data-path", default=None,
                   help="data.path of every run, e.g. a folder with Fashion-MNIST *-ubyte.gz")  # fmt: skip
    p.add_argument("--device", default=None, help="train.device of every run (default: the preset's)")
    p.add_argument("--budget-s", type=float, default=None, help="training seconds per run (default: the preset's)")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite report.md and figures from OUTPUT_DIR/results.json without training")  # fmt: skip
    p.add_argument("--merge", nargs="+", metavar="DIR", default=None,
                   help="merge the results.json of benchmark outputs that differ only in their seeds into "
                   "OUTPUT_DIR (results.json, report.md, figures) without training")  # fmt: skip
    p.set_defaults(func=run_bench_command)


def _saved_results(folders: list[Path], merge: bool) -> dict[str, Any]:
    """The ``results.json`` of a benchmark output, or of several merged (``dmjd.bench.merge``)."""
    paths = [folder / "results.json" for folder in folders]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise InputError(f"{', '.join(missing)}: no such file; run the benchmark first")
    parts = [json.loads(path.read_text()) for path in paths]
    if not merge:
        return parts[0]
    from dmjd.bench.merge import merge_results

    try:
        return merge_results(parts)
    except ValueError as err:
        raise InputError(str(err)) from None


def run_bench_command(args: argparse.Namespace) -> int:
    """Run the benchmark (or re-render its report) and print where the report is."""
    from dmjd.bench.efficiency import analyse, run_efficiency
    from dmjd.bench.report import write_report

    out = Path(args.output_dir)
    if args.report_only or args.merge:
        results = _saved_results([Path(d) for d in args.merge] if args.merge else [out], merge=bool(args.merge))
        results["analysis"] = analyse(results)
        if args.merge:
            out.mkdir(parents=True, exist_ok=True)
            (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        report = write_report(results, out)
    else:
        run_efficiency(
            args.preset,
            out,
            sections=args.sections,
            seeds=args.seeds,
            budget_s=args.budget_s,
            data_path=args.data_path,
            device=args.device,
            command=shlex.join(sys.argv),
        )
        report = out / "report.md"
    print(json.dumps({"report": str(report), "results": str(out / "results.json")}))
    return 0
