"""The benchmark's logic on the tiny model (no timing claims), and `skipsearch bench` end to end on SmolLM2."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from skipsearch.bench import (
    BASELINE,
    NO_SKIP,
    PROFILE,
    PROFILE_NO_FALLBACK,
    PROMPT_LOOKUP,
    BenchPrompt,
    BenchSettings,
    early_exit_name,
    run_bench,
)
from skipsearch.cli import main
from skipsearch.cli.bench_cmd import CSV_COLUMNS
from skipsearch.errors import SkipsearchError
from skipsearch.skipping import SkipSet, eligible_sublayers


@pytest.fixture(autouse=True)
def one_thread():
    """Two intra-op threads on two cores shared with other jobs run ~10x slower than one; no timing is checked."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_eos_model(tiny_model):
    """The tiny random model stops at its EOS after a few tokens; without one, every run has 8 tokens."""
    tiny_model.config.eos_token_id = None
    tiny_model.generation_config.eos_token_id = None
    return tiny_model


def random_prompts(count: int = 2, length: int = 10) -> list[BenchPrompt]:
    generator = torch.Generator().manual_seed(0)
    return [BenchPrompt(str(i), torch.randint(3, 128, (length,), generator=generator).tolist()) for i in range(count)]


def test_bench_rows_and_lossless_check(no_eos_model):
    settings = BenchSettings(
        max_new_tokens=8,
        skip_set=SkipSet(attention=(1,), mlp=(2,)),
        confidence_threshold=0.0,  # the random model is never confident; draft anyway
        early_exit_layers=(1,),
        cost_repeats=1,
        warmup_tokens=2,
    )
    seen = []
    result = run_bench(no_eos_model, random_prompts(), settings, progress=lambda done, total, _: seen.append((done, total)))

    methods = [BASELINE, NO_SKIP, PROFILE, PROFILE_NO_FALLBACK, "assistant_early_exit (best E=1)", PROMPT_LOOKUP]
    assert [row.method for row in result.rows] == methods
    assert [row.method for row in result.all_rows] == methods[:4] + [early_exit_name(1), PROMPT_LOOKUP]
    assert seen[-1] == (12, 12) and len(seen) == 12
    assert len(result.runs) == 12 and all(len(run.token_ids) == 8 for run in result.runs)

    rows = {row.method: row for row in result.rows}
    assert rows[BASELINE].ratio == 1.0 and rows[BASELINE].identical is None
    for name in (NO_SKIP, PROFILE, PROFILE_NO_FALLBACK):
        row = rows[name]
        assert (row.identical, row.tie_flips, row.errors) == (2, 0, 0)
        assert row.new_tokens == 16 and row.tokens_per_s > 0
        assert row.predicted_speedup is not None and row.predicted_speedup > 0
        assert row.measured_speedup == row.ratio
    assert rows[NO_SKIP].acceptance_rate is None and rows[NO_SKIP].predicted_speedup == pytest.approx(1.0)
    assert 0.0 <= rows[PROFILE_NO_FALLBACK].acceptance_rate <= 1.0
    assert rows[PROFILE_NO_FALLBACK].mean_accepted_tokens >= 1.0
    assert rows[PROMPT_LOOKUP].predicted_speedup is None
    assert result.mismatches == []

    data = result.to_dict()
    assert set(data) == {"settings", "rows", "all_rows", "runs", "costs"}
    assert data["settings"]["skip_set"] == {"attention": [1], "mlp": [2]}
    assert {"measured_speedup", "identical", "predicted_speedup"} <= set(data["rows"][0])
    json.dumps(data)  # serialisable as is


def test_the_profile_remembers_its_fallback_across_prompts_after_the_warm_up(no_eos_model):
    everything = SkipSet.from_sublayers(eligible_sublayers(4, keep_first=0, keep_last=0))
    settings = BenchSettings(max_new_tokens=40, skip_set=everything, confidence_threshold=0.0, early_exit_layers=(),
                             prompt_lookup_num_tokens=0, cost_repeats=0, warmup_tokens=40)
    result = run_bench(no_eos_model, random_prompts(3), settings)
    runs = [run for run in result.runs if run.method == PROFILE]
    assert all(run.divergence.kind == "identical" and run.stats.fell_back for run in runs)
    # the warm-up's verdict is forgotten: the first timed prompt pays for drafting, the others do not
    assert [run.stats.draft_steps > 0 for run in runs] == [True, False, False]


def test_bench_without_skip_set_or_costs(no_eos_model):
    settings = BenchSettings(max_new_tokens=4, early_exit_layers=(), prompt_lookup_num_tokens=0, cost_repeats=0,
                             warmup_tokens=0)
    result = run_bench(no_eos_model, random_prompts(1), settings)
    assert [row.method for row in result.rows] == [BASELINE, NO_SKIP]
    assert result.costs is None and result.rows[1].predicted_speedup is None
    assert result.rows[1].identical == 1 and result.rows[1].errors == 0


def test_a_method_that_breaks_the_output_counts_as_an_error(no_eos_model, monkeypatch):
    """The lossless check classifies every run against generate's; a corrupted token is an error."""
    from skipsearch import bench

    real_decode = bench.decode

    def corrupting(*args, **kwargs):
        result = real_decode(*args, **kwargs)
        result.token_ids[1] = (result.token_ids[1] + 1) % 128
        return result

    monkeypatch.setattr(bench, "decode", corrupting)
    settings = BenchSettings(max_new_tokens=4, early_exit_layers=(), prompt_lookup_num_tokens=0, cost_repeats=0,
                             warmup_tokens=0)
    result = run_bench(no_eos_model, random_prompts(2), settings)
    row = result.rows[1]
    assert (row.identical, row.tie_flips, row.errors) == (0, 0, 2)
    assert [(r.method, r.divergence.position) for r in result.mismatches] == [(NO_SKIP, 1), (NO_SKIP, 1)]


def test_bench_refuses_bad_input(no_eos_model):
    with pytest.raises(SkipsearchError, match="out of range .* use 1..3"):
        run_bench(no_eos_model, random_prompts(1), BenchSettings(max_new_tokens=2, early_exit_layers=(4,)))
    with pytest.raises(SkipsearchError, match="at least one prompt"):
        run_bench(no_eos_model, [], BenchSettings())
    with pytest.raises(SkipsearchError, match="confidence_threshold"):
        BenchSettings(confidence_threshold=2.0)


def test_early_exit_failure_leaves_layer_count(no_eos_model, monkeypatch):
    """transformers lowers config.num_hidden_layers while drafting without try/finally; the bench restores it."""
    original = no_eos_model.generate

    def broken_generate(*args, **kwargs):
        no_eos_model.config.num_hidden_layers = 1
        raise RuntimeError("boom")

    monkeypatch.setattr(no_eos_model, "generate", broken_generate)
    with pytest.raises(RuntimeError, match="boom"):
        run_bench(no_eos_model, random_prompts(1), BenchSettings(max_new_tokens=2, cost_repeats=0, warmup_tokens=0,
                                                                  early_exit_layers=(1,)))
    assert no_eos_model.config.num_hidden_layers == 4
    monkeypatch.setattr(no_eos_model, "generate", original)


@pytest.mark.integration
def test_bench_command_writes_csv_and_json(smollm, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("skipsearch.cli.bench_cmd.load_model", lambda *args, **kwargs: smollm)
    code = main([
        "bench", "--prompts", "1", "--max-new-tokens", "8", "--skip-attention", "5,9", "--skip-mlp", "3",
        "--early-exit-layers", "8", "--cost-repeats", "1", "--out-dir", str(tmp_path / "reports"), "--device", "cpu",
    ])
    assert code == 0
    out = capsys.readouterr().out
    assert "skipsearch (profile, no fallback)" in out and "assistant_early_exit (best E=8)" in out

    csv_path = tmp_path / "reports" / "bench-smollm2-135m-humaneval.csv"
    json_path = csv_path.with_suffix(".json")
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [row["identical"] for row in rows if row["method"].startswith("skipsearch")] == ["1"] * 3
    assert [row["errors"] for row in rows if row["method"].startswith("skipsearch")] == ["0"] * 3

    report = json.loads(json_path.read_text())
    assert report["command"].startswith("skipsearch bench --model smollm2-135m")
    assert report["task"] == "humaneval" and len(report["prompt_ids"]) == 1
    assert {"torch", "transformers"} <= set(report["versions"])
    assert report["device"].startswith("cpu") and report["dtype"] == "float32"
    assert len(report["runs"]) == 6 and report["costs"]["verify"]
