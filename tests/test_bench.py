"""The benchmark's logic on the tiny model (no timing claims), and `skipsearch bench` end to end on SmolLM2."""

from __future__ import annotations

import csv
import dataclasses
import io
import json

import pytest
import torch

from skipsearch.cli import main
from skipsearch.cli.bench_cmd import CSV_COLUMNS, _csv_text, table_lines
from skipsearch.engine.costs import CostModel, relative_costs
from skipsearch.engine.drafting import NgramSettings, PolicySettings, RelativeCosts
from skipsearch.engine.skipping import SkipSet, eligible_sublayers
from skipsearch.errors import SkipsearchError
from skipsearch.experiments import bench
from skipsearch.experiments.bench import (
    BASELINE,
    BY_COUNTS,
    BY_REPLAY,
    NGRAM_ONLY,
    NO_SKIP,
    PROFILE_POLICY,
    PROMPT_LOOKUP,
    SKIP_ONLY,
    SKIP_ONLY_NO_FALLBACK,
    BenchPrompt,
    BenchSettings,
    early_exit_name,
    prompt_lookup_name,
    run_bench,
)

from conftest import make_tokenizer

SKIPSEARCH_ROWS = [NO_SKIP, SKIP_ONLY, SKIP_ONLY_NO_FALLBACK, NGRAM_ONLY]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def no_eos_model(tiny_model):
    """The tiny random model stops at its EOS after a few tokens; without one, every run has all its tokens."""
    tiny_model.config.eos_token_id = None
    tiny_model.generation_config.eos_token_id = None
    return tiny_model


@pytest.fixture
def fixed_costs(monkeypatch):
    """A cost model that does not depend on the machine's load (verifying costs what a plain step
    costs, as on a device with spare parallelism), so the policy's choices are the same every run;
    records the verify lengths the bench asked for."""
    asked = []

    def measure(model, context_tokens, max_verify_tokens, repeats, seed, contexts=()):
        asked.append(max_verify_tokens)
        layers = model.config.num_hidden_layers
        return CostModel(attention=[1e-4] * layers, mlp=[1e-4] * layers, fixed=5e-4, verify=[1e-3] * max_verify_tokens,
                         device="test", dtype="float32", context_tokens=context_tokens)

    monkeypatch.setattr(bench, "measure_costs", measure)
    return asked


def random_prompts(count: int = 2, length: int = 10) -> list[BenchPrompt]:
    generator = torch.Generator().manual_seed(0)
    return [BenchPrompt(str(i), torch.randint(3, 128, (length,), generator=generator).tolist()) for i in range(count)]


def repeating_prompts() -> list[BenchPrompt]:
    """Prompts that repeat themselves, so the n-gram drafter finds matches from the first round."""
    return [BenchPrompt("seven", [3 + (i % 7) * 5 for i in range(24)]),
            BenchPrompt("five", [4 + (i % 5) * 3 for i in range(20)])]


def test_bench_rows_and_lossless_check(no_eos_model, fixed_costs):
    settings = BenchSettings(
        max_new_tokens=16,
        skip_set=SkipSet(attention=(1,), mlp=(2,)),
        confidence_threshold=0.0,  # the random model is never confident; draft anyway
        early_exit_layers=(1,),
        prompt_lookup_num_tokens=(3, 5, 10),
        cost_repeats=1,
        warmup_tokens=2,
    )
    seen = []
    result = run_bench(no_eos_model, repeating_prompts(), settings,
                       progress=lambda done, total, _: seen.append((done, total)))

    lookups = [prompt_lookup_name(n) for n in (3, 5, 10)]
    assert [row.method for row in result.all_rows] == [BASELINE, *lookups, early_exit_name(1), *SKIPSEARCH_ROWS]
    best_lookup = max((row for row in result.all_rows if row.method in lookups), key=lambda row: row.tokens_per_s)
    best_n = best_lookup.method.removeprefix(PROMPT_LOOKUP + " ")
    assert [row.method for row in result.rows] == [
        BASELINE, f"prompt lookup (best N={best_n})", "assistant_early_exit (best E=1)", *SKIPSEARCH_ROWS]
    assert result.rows[1].tokens_per_s == best_lookup.tokens_per_s
    assert seen[-1] == (18, 18) and len(seen) == 18
    assert len(result.runs) == 18 and all(len(run.token_ids) == 16 for run in result.runs)
    # the cost model's verify passes cover the longest draft any row makes: 10 n-gram tokens + the pending one
    assert fixed_costs == [11] and len(result.costs.verify) == 11

    rows = {row.method: row for row in result.all_rows}
    assert rows[BASELINE].end_to_end_speedup == 1.0 and rows[BASELINE].identical is None
    for row in result.all_rows[1:]:  # float32: every method's output is generate's
        assert (row.identical, row.tie_flips, row.errors) == (2, 0, 0), row.method
    for name in (BASELINE, *lookups, early_exit_name(1)):
        row = rows[name]
        assert row.predicted_speedup is None and row.ngram_rounds is None and row.plain_steps is None
    for name in SKIPSEARCH_ROWS:
        row = rows[name]
        assert row.new_tokens == 32 and row.tokens_per_s > 0
        assert row.predicted_speedup is not None and row.predicted_speedup > 0
        assert row.end_to_end_speedup == pytest.approx(row.tokens_per_s / rows[BASELINE].tokens_per_s)
        runs = [run for run in result.runs if run.method == name]
        assert row.ngram_rounds == sum(run.stats.ngram_rounds for run in runs)
        assert row.layer_skip_rounds == sum(run.stats.rounds - run.stats.ngram_rounds for run in runs)
        assert row.plain_steps == sum(run.stats.plain_steps for run in runs)
        assert row.draft_steps == sum(run.stats.draft_steps for run in runs)
    assert rows[NO_SKIP].acceptance_rate is None and rows[NO_SKIP].predicted_speedup == pytest.approx(1.0)
    assert (rows[NO_SKIP].ngram_rounds, rows[NO_SKIP].layer_skip_rounds) == (0, 0)
    no_fallback = rows[SKIP_ONLY_NO_FALLBACK]
    assert 0.0 <= no_fallback.acceptance_rate <= 1.0 and no_fallback.mean_accepted_tokens >= 1.0
    assert no_fallback.ngram_rounds == 0 and no_fallback.layer_skip_rounds > 0
    # n-gram only: drafts from the repeated prompts, never from the skipped model
    ngram = rows[NGRAM_ONLY]
    assert ngram.ngram_rounds > 0 and ngram.layer_skip_rounds == 0
    assert all(run.stats.draft_steps == 0 for run in result.runs if run.method == NGRAM_ONLY)
    assert [rows[name].predicted_by for name in SKIPSEARCH_ROWS] == [BY_COUNTS, BY_COUNTS, BY_COUNTS, BY_REPLAY]
    assert PROFILE_POLICY not in rows  # no policy given
    assert result.mismatches == []

    data = result.to_dict()
    assert set(data) == {"settings", "rows", "all_rows", "runs", "costs"}
    assert set(data["settings"]) == {f.name for f in dataclasses.fields(BenchSettings)}
    assert data["settings"]["skip_set"] == {"attention": [1], "mlp": [2]}
    assert data["settings"]["prompt_lookup_num_tokens"] == [3, 5, 10]
    assert data["settings"]["ngram"] == {"min_n": 1, "max_n": 4, "max_tokens": 10}
    assert {"end_to_end_speedup", "identical", "predicted_speedup", "ngram_rounds", "layer_skip_rounds",
            "plain_steps", "predicted_by"} <= set(data["rows"][0])
    json.dumps(data)  # serialisable as is

    table = csv.DictReader(io.StringIO(_csv_text(result)))
    assert tuple(table.fieldnames) == CSV_COLUMNS
    assert {"ngram_rounds", "layer_skip_rounds", "plain_steps", "draft_steps", "predicted_by"} <= set(CSV_COLUMNS)
    by_method = {line["method"]: line for line in table}
    assert list(by_method) == [row.method for row in result.rows]
    assert by_method[NGRAM_ONLY]["ngram_rounds"] == str(ngram.ngram_rounds)
    assert by_method[NGRAM_ONLY]["layer_skip_rounds"] == "0" and by_method[NGRAM_ONLY]["predicted_by"] == BY_REPLAY
    assert by_method[BASELINE]["ngram_rounds"] == ""
    lines = table_lines(result)
    assert "rounds ngram/skip/both/plain" in lines[0]
    ngram_line = next(line for line in lines if line.startswith(NGRAM_ONLY))
    assert f" {ngram.ngram_rounds}/0/0/{ngram.plain_steps} " in ngram_line


def _recording_decode(monkeypatch) -> list:
    """Records (skip set, decode settings) of every skipsearch call."""
    calls = []
    real = bench.decode

    def recording(model, prompt_ids, skip_set, settings, memory=None):
        calls.append((skip_set, settings))
        return real(model, prompt_ids, skip_set, settings, memory=memory)

    monkeypatch.setattr(bench, "decode", recording)
    return calls


PROFILE_COSTS = RelativeCosts(verify=(1.0, 1.05, 1.1, 1.15, 1.2, 1.25, 1.3), draft_step=0.7)


def test_profile_policy_row_drafts_with_the_profile_s_policy_and_costs(no_eos_model, fixed_costs, monkeypatch):
    calls = _recording_decode(monkeypatch)
    skip_set = SkipSet(attention=(1,), mlp=(2,))
    settings = BenchSettings(
        max_new_tokens=12, skip_set=skip_set, confidence_threshold=0.0, early_exit_layers=(),
        prompt_lookup_num_tokens=(5,), ngram=NgramSettings(1, 3, 6), policy_ngram=NgramSettings(1, 3, 6),
        policy=PolicySettings(margin=1.1), policy_costs=PROFILE_COSTS, cost_repeats=1, warmup_tokens=0,
    )
    result = run_bench(no_eos_model, repeating_prompts(), settings)
    assert [row.method for row in result.rows] == [BASELINE, "prompt lookup (best N=5)", *SKIPSEARCH_ROWS,
                                                   PROFILE_POLICY]
    assert [row.method for row in result.all_rows] == [BASELINE, prompt_lookup_name(5), *SKIPSEARCH_ROWS,
                                                       PROFILE_POLICY]
    rows = {row.method: row for row in result.rows}
    assert (rows[PROFILE_POLICY].identical, rows[PROFILE_POLICY].errors) == (2, 0)
    # a policy with both drafters: its layer-skip drafts cannot be replayed without the proxy's trace
    assert rows[PROFILE_POLICY].predicted_speedup is None and rows[PROFILE_POLICY].predicted_by is None
    assert rows[PROFILE_POLICY].ngram_rounds + rows[PROFILE_POLICY].layer_skip_rounds > 0

    per_method = {}
    for (skip, decode_settings), run in zip(calls, [r for r in result.runs if r.stats is not None]):
        per_method.setdefault(run.method, set()).add((skip, decode_settings))
    assert all(len(seen) == 1 for seen in per_method.values())  # one configuration per row, every prompt
    (policy_skip, policy_settings), = per_method[PROFILE_POLICY]
    assert policy_skip == skip_set and policy_settings.ngram == NgramSettings(1, 3, 6)
    assert policy_settings.policy == PolicySettings(margin=1.1) and policy_settings.costs == PROFILE_COSTS
    (ngram_skip, ngram_settings), = per_method[NGRAM_ONLY]
    assert ngram_skip == SkipSet() and ngram_settings.ngram == NgramSettings(1, 3, 6)
    assert ngram_settings.policy == PolicySettings()
    assert ngram_settings.costs == relative_costs(result.costs, SkipSet())  # the bench's own measurement
    (_, skip_settings), = per_method[SKIP_ONLY]
    assert skip_settings.ngram is None and skip_settings.costs is None  # drafts every round
    assert all(s.max_new_tokens == 12 and s.max_draft_tokens == 8 and s.confidence_threshold == 0.0
               for seen in per_method.values() for _, s in seen)


def test_profile_policy_predictions_by_what_it_drafts_with(no_eos_model, fixed_costs, monkeypatch):
    calls = _recording_decode(monkeypatch)
    common = {"max_new_tokens": 12, "confidence_threshold": 0.0, "early_exit_layers": (),
              "prompt_lookup_num_tokens": (), "cost_repeats": 1, "warmup_tokens": 0}
    # n-grams only (an empty skip set): replayed exactly over generate's outputs
    ngram_only = run_bench(no_eos_model, repeating_prompts(), BenchSettings(
        policy_ngram=NgramSettings(), policy=PolicySettings(margin=1.1), **common))
    assert [row.method for row in ngram_only.rows] == [BASELINE, NO_SKIP, NGRAM_ONLY, PROFILE_POLICY]
    row = ngram_only.rows[-1]
    assert row.predicted_by == BY_REPLAY and row.predicted_speedup > 0
    assert row.ngram_rounds > 0 and row.layer_skip_rounds == 0 and (row.identical, row.errors) == (2, 0)
    # without profile costs the policy decides with the bench's, relative to this skip set
    calls.clear()
    skip_set = SkipSet(attention=(1,))
    skip_policy = run_bench(no_eos_model, repeating_prompts(), BenchSettings(
        skip_set=skip_set, policy=PolicySettings(), ngram=None, **common))
    assert [row.method for row in skip_policy.rows] == [BASELINE, NO_SKIP, SKIP_ONLY, SKIP_ONLY_NO_FALLBACK,
                                                         PROFILE_POLICY]
    row = skip_policy.rows[-1]
    assert row.predicted_by == BY_COUNTS and row.predicted_speedup > 0 and row.ngram_rounds == 0
    assert calls[-1][1].costs == relative_costs(skip_policy.costs, skip_set)


def test_bench_settings(no_eos_model):
    assert BenchSettings(prompt_lookup_num_tokens=5).prompt_lookup_num_tokens == (5,)
    assert BenchSettings(prompt_lookup_num_tokens=0).prompt_lookup_num_tokens == ()
    with pytest.raises(SkipsearchError, match="prompt_lookup_num_tokens must be >= 1"):
        BenchSettings(prompt_lookup_num_tokens=(3, 0))
    with pytest.raises(SkipsearchError, match="duplicates"):
        BenchSettings(prompt_lookup_num_tokens=(3, 3))
    with pytest.raises(SkipsearchError, match="policy drafts nothing"):
        BenchSettings(policy=PolicySettings())
    settings = BenchSettings(skip_set=SkipSet(mlp=(1,)), policy=PolicySettings(), policy_costs=PROFILE_COSTS)
    assert settings.has_policy and settings.max_verified == 10
    assert BenchSettings(ngram=None).max_verified == 8 and not BenchSettings().has_policy
    data = settings.to_dict()
    assert data["policy_costs"] == {"verify": list(PROFILE_COSTS.verify), "draft_step": 0.7}
    assert data["policy"] == dataclasses.asdict(PolicySettings()) and data["policy_ngram"] is None
    json.dumps(data)


@pytest.mark.slow
def test_the_guard_suspends_a_losing_skip_set_in_every_timed_prompt(no_eos_model):
    everything = SkipSet.from_sublayers(eligible_sublayers(4, keep_first=0, keep_last=0))
    settings = BenchSettings(max_new_tokens=40, skip_set=everything, confidence_threshold=0.0, early_exit_layers=(),
                             prompt_lookup_num_tokens=0, ngram=None, cost_repeats=0, warmup_tokens=40)
    result = run_bench(no_eos_model, random_prompts(3), settings)
    runs = [run for run in result.runs if run.method == SKIP_ONLY]
    assert all(run.divergence.kind == "identical" and run.stats.fell_back for run in runs)
    assert all(run.stats.fallback_at_token < 30 for run in runs)


def test_bench_without_skip_set_or_costs(no_eos_model):
    settings = BenchSettings(max_new_tokens=8, early_exit_layers=(), prompt_lookup_num_tokens=0, cost_repeats=0,
                             warmup_tokens=0)
    result = run_bench(no_eos_model, repeating_prompts()[:1], settings)
    assert [row.method for row in result.rows] == [BASELINE, NO_SKIP, NGRAM_ONLY]
    assert result.costs is None
    for row in result.rows[1:]:
        assert row.predicted_speedup is None and row.predicted_by is None
        assert row.identical == 1 and row.errors == 0
    # without a cost model the n-gram row drafts by the fixed rule: the whole n-gram draft whenever there is one
    assert result.rows[2].ngram_rounds > 0 and result.rows[2].layer_skip_rounds == 0


def test_a_method_that_breaks_the_output_counts_as_an_error(no_eos_model, monkeypatch):
    """The lossless check classifies every run against generate's; a corrupted token is an error."""
    real_decode = bench.decode

    def corrupting(*args, **kwargs):
        result = real_decode(*args, **kwargs)
        result.token_ids[1] = (result.token_ids[1] + 1) % 128
        return result

    monkeypatch.setattr(bench, "decode", corrupting)
    settings = BenchSettings(max_new_tokens=4, early_exit_layers=(), prompt_lookup_num_tokens=0, ngram=None,
                             cost_repeats=0, warmup_tokens=0)
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


def _bench_settings_from_cli(argv, tiny_model, tmp_path, monkeypatch) -> BenchSettings:
    """The BenchSettings `skipsearch bench ARGV` builds, stopping before the benchmark runs."""
    from skipsearch.cli import bench_cmd
    from skipsearch.engine.models import LoadedModel

    seen = []

    def stop(model, prompts, settings, progress=None):
        seen.append(settings)
        raise SkipsearchError("stop here")

    monkeypatch.setattr(bench_cmd, "load_model",
                        lambda *args, **kwargs: LoadedModel(tiny_model, make_tokenizer(), "tiny", "test"))
    monkeypatch.setattr(bench_cmd, "run_bench", stop)
    assert main(["bench", "--prompts", "1", "--out-dir", str(tmp_path), "--device", "cpu", *argv]) == 2
    return seen[0]


def test_bench_command_takes_the_profile_s_policy(tiny_model, tmp_path, monkeypatch):
    from skipsearch.config.profiles import DraftSettings, Profile, ProfileModel, save_profile
    from skipsearch.engine.models import model_fingerprint

    model = ProfileModel("tiny", "llama", 4, model_fingerprint(tiny_model))
    hybrid = DraftSettings(max_draft_tokens=6, confidence_threshold=0.5, ngram=NgramSettings(1, 3, 6),
                           policy=PolicySettings(margin=1.1), costs=PROFILE_COSTS)
    save_profile(Profile(model=model, task="t", skip=SkipSet(attention=(1,)), draft=hybrid), tmp_path / "v2.yaml")
    settings = _bench_settings_from_cli(["--profile", str(tmp_path / "v2.yaml"), "--early-exit-layers", "none",
                                         "--prompt-lookup-num-tokens", "4,7"], tiny_model, tmp_path, monkeypatch)
    assert settings.prompt_lookup_num_tokens == (4, 7) and settings.early_exit_layers == ()
    assert settings.skip_set == SkipSet(attention=(1,)) and settings.has_policy
    assert (settings.max_draft_tokens, settings.confidence_threshold) == (6, 0.5)
    # the defaults row drafts as the runtime does without a profile; the profile's row as the profile says
    assert settings.ngram == NgramSettings() and settings.policy_ngram == NgramSettings(1, 3, 6)
    # by default the policy decides with the costs the bench times; the profile's only when asked
    assert settings.policy == PolicySettings(margin=1.1) and settings.policy_costs is None
    settings = _bench_settings_from_cli(["--profile", str(tmp_path / "v2.yaml"), "--policy-costs", "profile"],
                                        tiny_model, tmp_path, monkeypatch)
    assert settings.policy_costs == PROFILE_COSTS

    save_profile(Profile(model=model, task="t", skip=SkipSet(mlp=(2,)), draft=DraftSettings(8, 0.8)),
                 tmp_path / "v1.yaml")
    settings = _bench_settings_from_cli(["--profile", str(tmp_path / "v1.yaml"), "--prompt-lookup-num-tokens", "none"],
                                        tiny_model, tmp_path, monkeypatch)
    # a profile without n-grams (version 3: off) runs as the runtime runs it: the skip set under the policy
    assert settings.has_policy and settings.policy_ngram is None and settings.ngram == NgramSettings()
    assert settings.policy_costs is None
    # the defaults are 4, 8, ...: none fits
    assert settings.prompt_lookup_num_tokens == () and settings.early_exit_layers == ()
    settings = _bench_settings_from_cli([], tiny_model, tmp_path, monkeypatch)
    assert settings.prompt_lookup_num_tokens == (3, 5, 10) and settings.skip_set is None and not settings.has_policy
    assert main(["bench", "--prompt-lookup-num-tokens", "3,x"]) == 2


@pytest.mark.slow
@pytest.mark.integration
def test_bench_command_writes_csv_and_json(smollm, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("skipsearch.cli.bench_cmd.load_model", lambda *args, **kwargs: smollm)
    code = main([
        "bench", "--prompts", "1", "--max-new-tokens", "8", "--skip-attention", "5,9", "--skip-mlp", "3",
        "--early-exit-layers", "8", "--cost-repeats", "1", "--out-dir", str(tmp_path / "reports"), "--device", "cpu",
    ])
    assert code == 0
    out = capsys.readouterr().out
    assert "assistant_early_exit (best E=8)" in out and "prompt lookup (best N=" in out
    assert SKIP_ONLY_NO_FALLBACK in out and NGRAM_ONLY in out and "rounds ngram/skip/both/plain" in out

    csv_path = tmp_path / "reports" / "bench-smollm2-135m-humaneval.csv"
    json_path = csv_path.with_suffix(".json")
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [row["method"] for row in rows][3:] == SKIPSEARCH_ROWS
    assert [row["identical"] for row in rows[1:]] == ["1"] * 6
    assert [row["errors"] for row in rows[1:]] == ["0"] * 6
    assert rows[-1]["layer_skip_rounds"] == "0" and rows[-1]["predicted_by"] == BY_REPLAY

    report = json.loads(json_path.read_text())
    assert report["command"].startswith("skipsearch bench --model smollm2-135m")
    assert report["task"] == "humaneval" and len(report["prompt_ids"]) == 1
    assert {"torch", "transformers"} <= set(report["versions"])
    assert report["device"].startswith("cpu") and report["dtype"] == "float32"
    # generate, prompt lookup 3 / 5 / 10, early exit 8 and the four skipsearch rows
    assert len(report["runs"]) == 9 and len(report["costs"]["verify"]) == 11
