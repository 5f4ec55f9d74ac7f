"""The API a script follows: ``examples/custom_loop.py`` runs as a user runs it, and the README's
Python API block executes as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import dmjd

ROOT = Path(__file__).resolve().parents[1]


def test_custom_loop_example_trains_from_the_public_api():
    env = {**os.environ, "PYTHONPATH": str(Path(dmjd.__file__).parents[1])}  # this checkout's dmjd
    script = ROOT / "examples" / "custom_loop.py"
    argv = [sys.executable, "-W", "error:Converting a tensor:UserWarning", str(script), "--steps", "3"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("step ")]
    losses = [float(re.search(r"loss (\d+\.\d+)", line).group(1)) for line in lines]  # type: ignore[union-attr]
    assert len(lines) == 3 and "loss_mim" in lines[0] and "loss_vis" in lines[0]
    assert losses[-1] < losses[0]  # three steps on one fixed batch lower its loss


def test_readme_python_api_block_runs_as_written(capsys):
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Python API\n\n```python\n", 1)[1].split("```", 1)[0]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Converting a tensor")
        scope: dict = {}
        exec(compile(block, "README.md", "exec"), scope)
    out, views = scope["out"], scope["views"]
    assert out.pred_masked.shape == (16, views.num_masked, scope["target"].dim) == (16, 40, 108)
    assert out.pred_visible.shape == (16, views.num_visible, 108) == (16, 24, 108)
    logged = eval(capsys.readouterr().out.strip())  # {"loss": 2.3, ...}: plain floats
    assert set(logged) == {"loss", "loss_mim", "loss_vis"} and all(isinstance(v, float) for v in logged.values())
