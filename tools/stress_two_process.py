"""Run the two-process fine-tune and the two-process pre-train N times each beside a CPU hog, and count
how many ended cleanly and how many aborted (a rank killed by SIGABRT / ``terminate called ...``).

    python tools/stress_two_process.py            # 10 runs of each, one busy-looping hog process
    python tools/stress_two_process.py --runs 3 --hogs 2 --keep /tmp/stress

Every run is ``torchrun --nproc_per_node 2 -m dmjd ...`` on gloo (CPU) with tiny models on the
embedded sample, the commands of tests/test_finetune_extra.py and tests/test_distributed.py. A run is
``clean`` when it exits 0 and its stderr holds no abort, ``aborted`` when a rank died of SIGABRT or
printed ``terminate called``, ``failed`` otherwise. The exit status is 0 only when every run is clean.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY = ["model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.decoder_dim=32", "model.decoder_depth=1",
        "model.decoder_heads=2", "model.vdb_hidden=32", "model.patch_size=8", "masking.block_size=1",
        "data.limit=512", "optim.warmup_epochs=0.5", "optim.blr=1e-3", "train.progress=false",
        "train.tensorboard=false", "train.log_interval=2"]  # fmt: skip
FINETUNE = ["--recipe", "mae", "--max-images", "48", "--batch-size", "8", "--epochs", "1", "--warmup-epochs", "0",
            "--mixup", "0", "--cutmix", "0", "--smoothing", "0", "--rand-augment", "none", "--reprob", "0",
            "--drop-path", "0"]  # fmt: skip
ABORT = re.compile(r"terminate called|SIGABRT|Signal 6|exitcode\s*:\s*-6|core dumped")


def free_port() -> int:
    """A TCP port free on localhost now (for torchrun's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dmjd(*args: str, processes: int = 1) -> list[str]:
    """The command line of ``dmjd ARGS`` in one process, or under torchrun in ``processes``."""
    if processes == 1:
        return [sys.executable, "-m", "dmjd", *args]
    launch = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_addr", "127.0.0.1",
              "--master_port", str(free_port())]  # fmt: skip
    return [sys.executable, *launch, "-m", "dmjd", *args]


def outcome(proc: subprocess.CompletedProcess[str]) -> str:
    """``clean``, ``aborted`` or ``failed`` for one finished run."""
    if ABORT.search(proc.stderr) or proc.returncode in (-6, 134):
        return "aborted"
    return "clean" if proc.returncode == 0 else "failed"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=10, help="runs of each command (default 10)")
    parser.add_argument("--hogs", type=int, default=1, help="busy-looping processes beside the runs (default 1)")
    parser.add_argument("--keep", default=None, help="folder for the runs and their stderr (default: a temp folder)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds one run may take before it counts as failed")
    args = parser.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="dmjd-stress-"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(dmjd("pretrain", "--config", "demo", "--output-dir", str(root / "base"), *TINY, "optim.epochs=1",
                        "data.num_workers=0"), env=env, check=True, capture_output=True)  # fmt: skip
    checkpoint = str(root / "base" / "checkpoint-last.pth")
    finetune = ["finetune", "--checkpoint", checkpoint, *FINETUNE]
    pretrain = ["pretrain", "--config", "demo", *TINY, "optim.epochs=2", "optim.batch_size=32"]
    commands = {"finetune": finetune, "pretrain": pretrain}
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs)]
    counts: dict[str, dict[str, int]] = {}
    try:
        for name, command in commands.items():
            counts[name] = {"clean": 0, "aborted": 0, "failed": 0}
            for i in range(args.runs):
                out = root / f"{name}-{i}"
                start = time.monotonic()
                try:
                    proc = subprocess.run(
                        dmjd(command[0], "--output-dir", str(out), *command[1:], processes=2),
                        env=env,
                        capture_output=True,
                        text=True,
                        timeout=args.timeout,
                    )
                    result = outcome(proc)
                    (root / f"{name}-{i}.stderr").write_text(proc.stderr)
                except subprocess.TimeoutExpired:
                    result = "failed"
                counts[name][result] += 1
                print(f"{name} run {i + 1}/{args.runs}: {result} ({time.monotonic() - start:.0f} s)", flush=True)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    for name, c in counts.items():
        print(f"{name}: {c['clean']}/{args.runs} clean, {c['aborted']} aborted, {c['failed']} failed")
    print(f"outputs and stderr of every run: {root}")
    return 0 if all(c["clean"] == args.runs for c in counts.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
