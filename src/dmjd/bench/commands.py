"""``dmjd bench``: the efficiency benchmark and step profile from the command line (a thin layer
over ``dmjd.bench.efficiency``)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import textwrap
from pathlib import Path
from typing import Any

from dmjd.bench.testbeds import SECTION_NAMES, TESTBEDS, add_testbed_argument
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
    intro = (
        "Pre-train the paper's configurations side by side with the same wall-clock budget, evaluate them "
        "periodically (kNN + linear probe) and report accuracy at equal time and ETE, speed-ups and a step profile. "
        "A testbed fixes what every run on one machine shares (model, data, batch, budget, evaluation); it is not "
        "a --config preset of dmjd pretrain."
    )
    testbeds = [
        textwrap.fill(
            f"{t.name} ({f'{t.ete:g} ETE' if t.ete else f'{t.budget_s:g} s of training'} per run): {t.description}.",
            78,
            initial_indent="  ",
            subsequent_indent="    ",
            break_on_hyphens=False,
        )
        for t in TESTBEDS.values()
    ]
    p = subparsers.add_parser(
        "bench",
        help="efficiency benchmark: MAE vs +DM vs +JD vs DMJD at equal wall time (and ablations, step profile)",
        description="\n".join([textwrap.fill(intro, 78, break_on_hyphens=False), "", "Testbeds:", *testbeds]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_testbed_argument(p, "the machine's benchmark setting (default cpu)")
    p.add_argument("--output-dir", required=True, help="receives runs/, results.json, report.md and PNG figures")
    p.add_argument("--sections", type=_sections, default=None,
                   help=f"comma-separated, from {','.join(SECTION_NAMES)} (default: the testbed's)")  # fmt: skip
    p.add_argument("--seeds", type=_seeds, default=None, help="comma-separated seeds (default: the testbed's)")
    p.add_argument("--data-path", default=None,
                   help="data.path of every run, e.g. a folder with Fashion-MNIST *-ubyte.gz")  # fmt: skip
    p.add_argument("--device", default=None, help="train.device of every run (default: the testbed's)")
    p.add_argument("--budget-s", type=float, default=None, help="training seconds per run (default: the testbed's)")
    p.add_argument("--ete", default=None, metavar="E",
                   help="instead of a time budget, train every run for exactly E effective epochs (ETE = K x epochs) "
                   "and compare at equal ETE; figures independent of the machine's load. The same command into the "
                   "same --output-dir continues an unfinished benchmark (finished runs kept, the unfinished one "
                   "resumed)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="delete an earlier benchmark in --output-dir and start afresh")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite report.md and figures from OUTPUT_DIR/results.json without training")  # fmt: skip
    p.add_argument("--merge", nargs="+", metavar="DIR", default=None,
                   help="merge the results.json of benchmark outputs that differ only in their seeds into "
                   "OUTPUT_DIR (results.json, report.md, figures) without training")  # fmt: skip
    p.set_defaults(func=run_bench_command)


def _methods(text: str) -> list[str]:
    return _csv(text)


def _seed_count(text: str) -> list[int]:
    """``--seeds N`` (seeds 0..N-1) or a comma-separated list."""
    seeds = _seeds(text)
    return list(range(seeds[0])) if len(seeds) == 1 and "," not in text else seeds


def register_compare_command(subparsers: argparse._SubParsersAction) -> None:
    """Add ``dmjd compare`` to the ``dmjd`` command's subparsers."""
    p = subparsers.add_parser(
        "compare",
        help="does DMJD pay off on your data? MAE vs DMJD at an equal time budget, with a verdict",
        description=(
            "The efficiency benchmark on your data: each method runs with the auto recipe (dmjd pretrain --config "
            "auto; one model for all) at an equal wall-clock budget per run, methods alternating seed by seed. "
            "Labelled data (class sub-folders; val/ beside train/ is the test split, else a seeded stratified "
            "split): kNN and linear probe during training, end-of-run fine-tuning, baselines (untrained encoder, "
            "raw pixels, fine-tuning from scratch). Unlabelled data (a flat folder): RankMe and the masked-prediction "
            "loss. Writes report.md with a one-sentence verdict, results.json and figures."
        ),
    )
    p.add_argument("data", help="image folder (class sub-folders give labels), a Fashion-MNIST/CIFAR folder, or a "
                   "data set name (embedded, fashion_mnist, cifar10, ...)")  # fmt: skip
    p.add_argument("--budget", required=True, help="training time per run: 90s, 20m, 2h")
    p.add_argument("--methods", type=_methods, default=["mae", "dmjd"], help="comma-separated (default mae,dmjd)")
    p.add_argument("--seeds", type=_seed_count, default=[0, 1, 2],
                   help="number of seeds (3 = seeds 0,1,2; the default) or a comma-separated list")  # fmt: skip
    p.add_argument("--output-dir", default=None, help="default: compare-<data folder name>")
    p.add_argument("--device", default=None, help="train.device of every run (default auto)")
    p.add_argument("--finetune-epochs", type=int, default=None,
                   help="end-of-run fine-tuning epochs (labelled data; default 10, 0 = none)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true",
                   help="delete an earlier comparison in --output-dir and start afresh (by default the same command "
                   "continues it: finished runs kept, an unfinished one resumed)")  # fmt: skip
    p.add_argument("--init", default=None, metavar="SOURCE",
                   help="continue every run from these weights (model.init: MAE / timm / Hugging Face / dmjd); the "
                   "starting encoder is then a baseline beside an untrained one and raw pixels")  # fmt: skip
    p.set_defaults(func=run_compare_command)


def run_compare_command(args: argparse.Namespace) -> int:
    """Run ``dmjd compare`` and print its verdict and where the report is."""
    from dmjd.bench.compare import run_compare
    from dmjd.config.duration import parse_duration

    try:
        budget_s = parse_duration(args.budget)
    except ValueError as err:
        raise InputError(f"--budget: {err}") from None
    out = Path(args.output_dir or f"compare-{Path(args.data).name}")
    results = run_compare(args.data, out, budget_s, args.methods, args.seeds, args.device, args.finetune_epochs,
                          command=shlex.join(sys.argv), overwrite=args.overwrite, init=args.init)  # fmt: skip
    print(f"dmjd: verdict: {results['verdict']}")
    print(json.dumps({"report": str(out / "report.md"), "results": str(out / "results.json")}))
    return 0


def _saved_results(folders: list[Path]) -> list[dict[str, Any]]:
    """The ``results.json`` of each benchmark output folder."""
    paths = [folder / "results.json" for folder in folders]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise InputError(f"{', '.join(missing)}: no such file; run the benchmark first")
    return [json.loads(path.read_text()) for path in paths]


def _ete(text: str | None, budget_s: float | None) -> float | None:
    """``--ete``'s value: a positive number of effective epochs, never with ``--budget-s``."""
    if text is None:
        return None
    try:
        ete = float(text)
    except ValueError:
        raise InputError(f"--ete takes a number of effective training epochs, got {text!r}") from None
    if not ete > 0 or ete == float("inf"):
        raise InputError(f"--ete must be a positive number of effective training epochs, got {text}")
    if budget_s is not None:
        raise InputError("--ete and --budget-s are two ways to end a run; give one of them")
    return ete


def run_bench_command(args: argparse.Namespace) -> int:
    """Run the benchmark (or re-render its report) and print where the report is."""
    from dmjd.bench.efficiency import analyse, run_efficiency, write_json
    from dmjd.bench.ete_report import write_benchmark_report as write_report

    out = Path(args.output_dir)
    ete = _ete(args.ete, args.budget_s)
    if args.merge:
        from dmjd.bench.merge import merge_results

        try:
            results = merge_results(_saved_results([Path(d) for d in args.merge]))
        except ValueError as err:
            raise InputError(str(err)) from None
        results["analysis"] = analyse(results)
        out.mkdir(parents=True, exist_ok=True)
        write_json(results, out / "results.json")
        report = write_report(results, out)
    elif args.report_only:
        results = _saved_results([out])[0]
        results["analysis"] = analyse(results)
        report = write_report(results, out)
    else:
        run_efficiency(
            args.testbed,
            out,
            sections=args.sections,
            seeds=args.seeds,
            budget_s=args.budget_s,
            data_path=args.data_path,
            device=args.device,
            command=shlex.join(sys.argv),
            ete=ete,
            overwrite=args.overwrite,
        )
        report = out / "report.md"
    print(json.dumps({"report": str(report), "results": str(out / "results.json")}))
    return 0
