"""Benchmark: self-speculative decoding beside transformers' own decoders, on the same prompts.

`run_bench` runs every method on every prompt in one process, interleaved (for each
prompt, each method in turn), so drift in the machine's speed hits all methods alike. The
methods, in the table's order:

- `generate`: greedy `model.generate`, the baseline;
- `prompt lookup N`: `generate(prompt_lookup_num_tokens=N)` for each N of
  `prompt_lookup_num_tokens`; the table keeps the fastest ("prompt lookup (best N=…)");
- `early-exit E`: `generate(assistant_early_exit=E)` for each E of `early_exit_layers`; the
  table keeps the fastest ("assistant_early_exit (best E=…)");
- skipsearch's decoder (`decoding.decode`, each row with the throughput guard and a
  `PolicyMemory` carried across prompts as a runtime would, unless its name says otherwise):
  `NO_SKIP` (nothing to draft with: the decoder's overhead); `SKIP_ONLY` and
  `SKIP_ONLY_NO_FALLBACK` (the skip set drafts every round, no policy; only with a skip set);
  `NGRAM_ONLY` (the runtime's defaults without a profile: n-gram drafts from `ngram` under the
  policy with default `PolicySettings`, deciding with the bench's measured costs relative to a
  plain step, else with this device's cached ones); `PROFILE_POLICY` (only with a profile: the
  skip set, `policy_ngram` and the policy with the profile's priors, deciding with
  `policy_costs`, else with the bench's relative costs, else with this device's).

Every method's output is checked against the baseline's tokens (`lossless.classify`:
identical, a tie flip in bfloat16/float16, or an error). Skipsearch rows count their rounds
by drafter (n-gram, layer skip) and their plain steps, and get a predicted speedup from a
cost model measured on the same device (`cost_repeats` > 0), to set beside the measured one
(`MethodRow.predicted_by` says which):

- rows without n-gram drafting (`NO_SKIP`, `SKIP_ONLY`, `SKIP_ONLY_NO_FALLBACK`, a profile
  policy without n-grams): `costs.predicted_speedup_from_stats`, the cost model applied to
  the run's own counts ("counts");
- rows with n-gram drafting and no skip set (`NGRAM_ONLY`, a profile policy of n-grams only):
  `costs.replay_drafting` of the policy over `generate`'s output for each prompt with the
  bench's relative costs ("replay"). It is exact for n-gram drafts (they only depend on the
  context), but it replays the policy alone: the decoder's probe steps and fallback are not
  in it;
- a profile policy with both a skip set and n-grams: none. Replaying its layer-skip drafts
  needs the skipped model's per-position confidences (the search's proxy trace), which the
  bench does not compute, and the run's own counts mix two drafters whose rounds cost differently.

This module knows nothing about tokenizers, task files, printing or output files: it takes
prompt ids and returns rows; the CLI (`skipsearch bench`) does the rest.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch

from skipsearch.engine import forward
from skipsearch.engine.costs import CostModel, measure_costs, relative_costs
from skipsearch.engine.decoding import DecodeSettings, DecodeStats, decode, resolve_costs
from skipsearch.engine.drafting import (
    DEFAULT_CONFIDENCE_THRESHOLD,
    DEFAULT_MAX_DRAFT_TOKENS,
    NgramSettings,
    PolicyMemory,
    PolicySettings,
    Priors,
    RelativeCosts,
)
from skipsearch.engine.lossless import KINDS, Divergence, classify
from skipsearch.engine.prediction import predicted_speedup_from_stats
from skipsearch.engine.replay import ReplayPrompt, prompt_costs, replay_drafting
from skipsearch.engine.skipping import SkipSet, decoder_layers
from skipsearch.engine.timing import Stopwatch
from skipsearch.errors import SkipsearchError

if TYPE_CHECKING:
    from skipsearch.config.profiles import Profile

log = logging.getLogger(__name__)

BASELINE = "generate"
NO_SKIP = "skipsearch (no skip)"
SKIP_ONLY = "skipsearch (skip only)"
SKIP_ONLY_NO_FALLBACK = "skipsearch (skip only, no fallback)"
NGRAM_ONLY = "skipsearch (defaults, no profile)"
PROFILE_POLICY = "skipsearch (profile policy)"
# the skip-only rows' earlier names
PROFILE, PROFILE_NO_FALLBACK = SKIP_ONLY, SKIP_ONLY_NO_FALLBACK
EARLY_EXIT = "early-exit"
PROMPT_LOOKUP = "prompt lookup"
# how a row's predicted speedup was computed (MethodRow.predicted_by)
BY_COUNTS, BY_REPLAY = "counts", "replay"


@dataclass(frozen=True)
class BenchPrompt:
    id: str
    token_ids: list[int]


@dataclass(frozen=True)
class BenchSettings:
    max_new_tokens: int = 96
    # the skip set to draft with; None benchmarks no layer-skip drafting
    skip_set: SkipSet | None = None
    max_draft_tokens: int = DEFAULT_MAX_DRAFT_TOKENS
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD
    # layers E for generate(assistant_early_exit=E); () leaves early exit out
    early_exit_layers: tuple[int, ...] = (4, 8, 12, 16, 20, 24)
    # n-gram candidates per step for generate(prompt_lookup_num_tokens=N), one method per N; () leaves
    # prompt lookup out (an int is taken as one value, 0 as none)
    prompt_lookup_num_tokens: tuple[int, ...] = (3, 5, 10)
    # the n-gram drafter of the n-gram-only row; None leaves that row out
    ngram: NgramSettings | None = field(default_factory=NgramSettings)
    # a profile's drafting policy, for the profile-policy row (the skip set drafting beside
    # policy_ngram, chosen each round by the policy); the row runs when either is set
    policy_ngram: NgramSettings | None = None
    policy: PolicySettings | None = None
    policy_priors: Priors | None = None  # the profile's evidence
    # the costs the profile's policy decides with (relative to a plain step); None: the bench's
    policy_costs: RelativeCosts | None = None
    # repeats per configuration when measuring the cost model; 0 leaves predictions out
    cost_repeats: int = 5
    # new tokens of the warm-up run of each method on the first prompt; 0 skips the warm-up
    warmup_tokens: int = 8
    # seed of the cost model's random context ids (greedy decoding itself draws nothing)
    seed: int = 0
    # the profile itself, for the generate(custom_generate=...) row (see the end of this module);
    # None leaves that row out
    profile: Profile | None = None

    def __post_init__(self) -> None:
        lookup = self.prompt_lookup_num_tokens
        if isinstance(lookup, int) and not isinstance(lookup, bool):
            lookup = (lookup,) if lookup else ()
        object.__setattr__(self, "prompt_lookup_num_tokens", tuple(lookup))
        object.__setattr__(self, "early_exit_layers", tuple(self.early_exit_layers))
        checks = [
            (self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}"),
            (self.max_draft_tokens >= 1, f"max_draft_tokens must be >= 1, got {self.max_draft_tokens}"),
            (0.0 <= self.confidence_threshold <= 1.0,
             f"confidence_threshold must be in [0, 1], got {self.confidence_threshold}"),
            (all(e >= 1 for e in self.early_exit_layers),
             f"early-exit layers must be >= 1, got {list(self.early_exit_layers)}"),
            (all(n >= 1 for n in self.prompt_lookup_num_tokens),
             (f"prompt_lookup_num_tokens must be >= 1 each (() leaves prompt lookup out), "
              f"got {list(self.prompt_lookup_num_tokens)}")),
            (len(set(self.prompt_lookup_num_tokens)) == len(self.prompt_lookup_num_tokens),
             f"prompt_lookup_num_tokens has duplicates: {list(self.prompt_lookup_num_tokens)}"),
            (len(set(self.early_exit_layers)) == len(self.early_exit_layers),
             f"early-exit layers have duplicates: {list(self.early_exit_layers)}"),
            (not self.has_policy or self.policy_ngram is not None or bool(self.skip_set),
             "the profile's policy drafts nothing: no skip set and no n-gram drafter (policy_ngram)"),
            (self.cost_repeats >= 0, f"cost_repeats must be >= 0 (0 leaves predictions out), got {self.cost_repeats}"),
            (self.warmup_tokens >= 0, f"warmup_tokens must be >= 0 (0 skips the warm-up), got {self.warmup_tokens}"),
        ]
        for ok, message in checks:
            if not ok:
                raise SkipsearchError(message)

    @property
    def has_policy(self) -> bool:
        """Whether the profile-policy row runs."""
        return self.policy is not None or self.policy_ngram is not None

    @property
    def max_verified(self) -> int:
        """The most tokens any skipsearch row drafts in one round: the cost model's verify
        passes go one further (the pending token)."""
        ngrams = [n.max_tokens for n in (self.ngram, self.policy_ngram if self.has_policy else None) if n]
        return max([self.max_draft_tokens, *ngrams])

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["skip_set"] = None if self.skip_set is None else self.skip_set.to_dict()
        out["early_exit_layers"] = list(self.early_exit_layers)
        out["prompt_lookup_num_tokens"] = list(self.prompt_lookup_num_tokens)
        if self.policy_costs is not None:
            out["policy_costs"]["verify"] = list(self.policy_costs.verify)
        return out


@dataclass
class PromptRun:
    """One method on one prompt."""

    method: str
    prompt_id: str
    token_ids: list[int]  # generated ids only
    time_s: float
    stats: DecodeStats | None = None  # skipsearch methods only
    divergence: Divergence | None = None  # against the baseline's tokens; None for the baseline itself

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "prompt_id": self.prompt_id,
            "new_tokens": len(self.token_ids),
            "time_s": self.time_s,
            "tokens_per_s": len(self.token_ids) / self.time_s if self.time_s else 0.0,
            "lossless": None if self.divergence is None else self.divergence.kind,
            "divergence": None if self.divergence is None else dataclasses.asdict(self.divergence),
            "stats": None if self.stats is None else self.stats.to_dict(),
            "token_ids": self.token_ids,
        }


@dataclass
class MethodRow:
    """One method over all prompts: a row of the table."""

    method: str
    new_tokens: int
    time_s: float
    tokens_per_s: float  # all new tokens / all time
    end_to_end_speedup: float  # tokens_per_s over transformers generate's, whole calls
    acceptance_rate: float | None = None  # share of drafted tokens accepted (skipsearch methods)
    mean_accepted_tokens: float | None = None  # tokens committed per verify round (skipsearch methods)
    # the cost model's prediction (skipsearch methods; None where it cannot be computed) and how:
    # BY_COUNTS (from this row's counts) or BY_REPLAY (the policy replayed over generate's outputs)
    predicted_speedup: float | None = None
    predicted_by: str | None = None
    # prompts whose output is identical to the baseline's / differs by a tie flip / by an error;
    # None for the baseline
    identical: int | None = None
    tie_flips: int | None = None
    errors: int | None = None
    fell_back: int | None = None  # prompts on which the decoder switched to plain decoding
    # skipsearch methods, over all prompts: verify rounds of n-gram drafts, of layer-skip drafts,
    # of n-gram drafts the skipped model continued, and full-model steps without a draft (probe,
    # fallback, the policy's plain choice, a layer-skip draft stopped before its first token), and
    # the skipped model's passes (those of empty drafts included)
    ngram_rounds: int | None = None
    layer_skip_rounds: int | None = None
    ngram_layer_skip_rounds: int | None = None
    plain_steps: int | None = None
    draft_steps: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class BenchResult:
    rows: list[MethodRow]  # the table: early exit and prompt lookup each reduced to their fastest value
    all_rows: list[MethodRow]  # every method, every early-exit layer and prompt-lookup length
    runs: list[PromptRun]  # per prompt and method, in the order they ran
    costs: CostModel | None = None
    settings: BenchSettings = field(default_factory=BenchSettings)

    @property
    def mismatches(self) -> list[PromptRun]:
        """Skipsearch runs whose tokens differ from the baseline's by more than a tie flip: a broken
        lossless guarantee."""
        return [r for r in self.runs if r.stats is not None and r.divergence is not None
                and r.divergence.kind == "error"]

    def to_dict(self) -> dict:
        return {
            "settings": self.settings.to_dict(),
            "rows": [row.to_dict() for row in self.rows],
            "all_rows": [row.to_dict() for row in self.all_rows],
            "runs": [run.to_dict() for run in self.runs],
            "costs": None if self.costs is None else self.costs.to_dict(),
        }


@dataclass(frozen=True)
class _Method:
    name: str
    # (prompt ids, max new tokens) -> (generated ids, decode stats or None); untimed
    generate: Callable[[list[int], int], tuple[list[int], DecodeStats | None]]
    memory: PolicyMemory | None = None  # what the policy learned, carried across prompts as a runtime would
    verify_tokens: int = 9  # the longest verify pass it runs: the lossless check's multi-token pass
    # skipsearch methods: what the draft skips and the decoder's settings (max_new_tokens aside)
    skip_set: SkipSet | None = None
    decode_settings: DecodeSettings | None = None


def early_exit_name(layer: int) -> str:
    return f"{EARLY_EXIT} {layer}"


def prompt_lookup_name(num_tokens: int) -> str:
    return f"{PROMPT_LOOKUP} {num_tokens}"


def _hf_generate(model, **extra) -> Callable[[list[int], int], tuple[list[int], None]]:
    device = forward.input_device(model)
    pad = model.generation_config.pad_token_id
    if pad is None:
        pad = model.generation_config.eos_token_id
        pad = pad[0] if isinstance(pad, (list, tuple)) else pad

    def run(prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], None]:
        input_ids = torch.tensor([prompt_ids], device=device)  # (1, prompt)
        # Assisted generation with early exit lowers config.num_hidden_layers while drafting and
        # restores it without try/finally; restore it here too so an exception cannot leave it lowered.
        num_layers = model.config.num_hidden_layers
        try:
            with torch.inference_mode():
                output = model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    do_sample=False,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=pad,
                    **extra,
                )
        finally:
            model.config.num_hidden_layers = num_layers
        return output[0, len(prompt_ids):].tolist(), None

    return run


def _skipsearch(model, name: str, skip_set: SkipSet, settings: DecodeSettings, remember: bool) -> _Method:
    """A skipsearch row: `decode` with these settings; `remember` carries the fallback's verdict
    across prompts in a PolicyMemory."""
    memory = PolicyMemory() if remember else None

    def run(prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], DecodeStats]:
        result = decode(model, prompt_ids, skip_set,
                        dataclasses.replace(settings, max_new_tokens=max_new_tokens), memory=memory)
        return result.token_ids, result.stats

    return _Method(name, run, memory, verify_tokens=settings.longest_draft + 1, skip_set=skip_set,
                   decode_settings=settings)


def _check_methods(model, settings: BenchSettings) -> None:
    num_layers = len(decoder_layers(model))
    bad = [e for e in settings.early_exit_layers if e >= num_layers]
    if bad:
        raise SkipsearchError(
            f"early-exit layers {bad} are out of range for a model with {num_layers} decoder layers; "
            f"use 1..{num_layers - 1}"
        )
    if settings.skip_set is not None:
        settings.skip_set.check_against(num_layers)


def _methods(model, settings: BenchSettings, costs: CostModel | None) -> list[_Method]:
    """Every method in the table's order; `costs` (the bench's cost model) is what the policy rows
    decide with when they have no costs of their own."""
    _check_methods(model, settings)
    skip_set = settings.skip_set or SkipSet()
    plain_verify = settings.max_draft_tokens + 1
    methods = [_Method(BASELINE, _hf_generate(model), verify_tokens=plain_verify)]
    methods += [
        _Method(prompt_lookup_name(n), _hf_generate(model, prompt_lookup_num_tokens=n), verify_tokens=n + 1)
        for n in settings.prompt_lookup_num_tokens
    ]
    methods += [
        _Method(early_exit_name(e), _hf_generate(model, assistant_early_exit=e), verify_tokens=plain_verify)
        for e in settings.early_exit_layers
    ]
    # the rows without a policy: the skip set drafts every round (the fixed rule), no n-grams
    base = DecodeSettings(max_new_tokens=settings.max_new_tokens, max_draft_tokens=settings.max_draft_tokens,
                          confidence_threshold=settings.confidence_threshold, ngram=None, costs=None)
    methods.append(_skipsearch(model, NO_SKIP, SkipSet(), base, remember=False))
    if len(skip_set):
        methods += [
            _skipsearch(model, SKIP_ONLY, skip_set, base, remember=True),
            _skipsearch(model, SKIP_ONLY_NO_FALLBACK, skip_set, dataclasses.replace(base, fallback=False),
                        remember=False),
        ]
    if settings.ngram is not None:
        ngram_costs = None if costs is None else relative_costs(costs, SkipSet())
        methods.append(_skipsearch(model, NGRAM_ONLY, SkipSet(),
                                   dataclasses.replace(base, ngram=settings.ngram, costs=ngram_costs or "here",
                                                       policy=PolicySettings()),
                                   remember=True))
    policy_costs = settings.policy_costs
    if policy_costs is None and costs is not None:
        policy_costs = relative_costs(costs, skip_set)
    if settings.has_policy:
        methods.append(_skipsearch(model, PROFILE_POLICY, skip_set,
                                   dataclasses.replace(base, ngram=settings.policy_ngram,
                                                       costs=policy_costs or "here",
                                                       policy=settings.policy or PolicySettings(),
                                                       priors=settings.policy_priors),
                                   remember=True))
    methods += _custom_generate_methods(model, settings, policy_costs)
    return methods


def _timed(method: _Method, prompt_ids: list[int], max_new_tokens: int, devices):
    with Stopwatch(devices) as watch:
        token_ids, stats = method.generate(prompt_ids, max_new_tokens)
    return token_ids, stats, watch.seconds


def _prediction(method: _Method, runs: list[PromptRun], costs: CostModel | None,
                replay: list[ReplayPrompt]) -> tuple[float | None, str | None]:
    """(predicted speedup, how) of a skipsearch row; (None, None) where it cannot be computed
    (see the module docstring). Each prompt is predicted with the costs at its own context
    (`CostModel.at_context`) and weighs by the plain decoding time it would take."""
    if costs is None:
        return None, None
    if method.decode_settings.ngram is None:
        plain = drafted = 0.0
        for run, prompt in zip(runs, replay):  # both in the order the prompts ran
            here = costs.at_context(len(prompt.prompt_ids) + len(run.token_ids) // 2)
            plain_time = len(run.token_ids) * here.plain_step
            plain += plain_time
            drafted += plain_time / predicted_speedup_from_stats(here, method.skip_set, run.stats)
        return (plain / drafted if drafted else 1.0), BY_COUNTS
    if len(method.skip_set):
        return None, None  # layer-skip drafts cannot be replayed without the proxy's trace
    per_prompt, plain_steps = prompt_costs(costs, method.skip_set, replay)
    _, speedup = replay_drafting(replay, method.decode_settings, layer_skip=False, costs=per_prompt,
                                 plain_steps=plain_steps)
    return speedup, BY_REPLAY


def _summarise(method: _Method, runs: list[PromptRun], baseline_tokens_per_s: float | None,
               costs: CostModel | None, replay: list[ReplayPrompt]) -> MethodRow:
    new_tokens = sum(len(r.token_ids) for r in runs)
    time_s = sum(r.time_s for r in runs)
    tokens_per_s = new_tokens / time_s if time_s else 0.0
    row = MethodRow(
        method=method.name,
        new_tokens=new_tokens,
        time_s=time_s,
        tokens_per_s=tokens_per_s,
        end_to_end_speedup=tokens_per_s / baseline_tokens_per_s if baseline_tokens_per_s else 1.0,
    )
    if method.name != BASELINE:
        kinds = [r.divergence.kind for r in runs]
        row.identical, row.tie_flips, row.errors = (kinds.count(kind) for kind in KINDS)
    if method.decode_settings is not None:
        stats = DecodeStats.total([r.stats for r in runs])
        row.acceptance_rate = stats.acceptance_rate if stats.drafted_tokens else None
        row.mean_accepted_tokens = stats.mean_accepted_tokens if stats.rounds else None
        row.fell_back = sum(bool(r.stats.fell_back) for r in runs)
        row.ngram_rounds = stats.ngram_rounds
        row.layer_skip_rounds = stats.layer_skip_rounds
        row.ngram_layer_skip_rounds = stats.ngram_layer_skip_rounds
        row.plain_steps = stats.plain_steps
        row.draft_steps = stats.draft_steps
        row.predicted_speedup, row.predicted_by = _prediction(method, runs, costs, replay)
    return row


def _cost_context(prompts: list[BenchPrompt], settings: BenchSettings, max_positions: int | None) -> int:
    """The context length at which decoding spends most of its steps: a typical prompt plus half the output."""
    context = int(statistics.median(len(p.token_ids) for p in prompts)) + settings.max_new_tokens // 2
    if max_positions is not None:
        context = min(context, max_positions - settings.max_verified - 1)
    return max(context, 1)


def run_bench(
    model,
    prompts: list[BenchPrompt],
    settings: BenchSettings = BenchSettings(),
    progress: Callable[[int, int, str], None] | None = None,
) -> BenchResult:
    """Run every method on every prompt, interleaved; `progress(done, total, label)` after each run."""
    if not prompts:
        raise SkipsearchError("the benchmark needs at least one prompt")
    if any(not p.token_ids for p in prompts):
        raise SkipsearchError("a benchmark prompt is empty; give at least one token per prompt")
    devices = forward.model_devices(model)  # what each timed call waits for
    _check_methods(model, settings)  # before the cost model: bad settings fail at once

    costs = None
    if settings.cost_repeats:
        context = _cost_context(prompts, settings, getattr(model.config, "max_position_embeddings", None))
        log.info("measuring the cost model (context %d tokens, %d repeats)", context, settings.cost_repeats)
        # attention timed again at the shortest and longest contexts the prompts reach, for the
        # predictions at each prompt's own context
        lengths = [len(p.token_ids) + settings.max_new_tokens // 2 for p in prompts]
        limit = getattr(model.config, "max_position_embeddings", None)
        contexts = [n for n in (min(lengths), max(lengths)) if limit is None or n + 1 < limit]
        costs = measure_costs(model, context_tokens=context, max_verify_tokens=settings.max_verified + 1,
                              repeats=settings.cost_repeats, seed=settings.seed, contexts=contexts)
    methods = _methods(model, settings, costs)

    if settings.warmup_tokens:
        warmup_tokens = min(settings.warmup_tokens, settings.max_new_tokens)
        for method in methods:
            method.generate(prompts[0].token_ids, warmup_tokens)
            if method.memory is not None:
                method.memory.forget()  # the timed prompts learn for themselves
    # a runtime deciding with this device's costs times them once per context bucket and keeps
    # them in the cache: time them now, so that no timed call pays for it
    for method in methods:
        if method.decode_settings is not None and method.decode_settings.costs == "here":
            for prompt in prompts:
                resolve_costs(model, method.skip_set or SkipSet(), method.decode_settings, len(prompt.token_ids),
                              settings.max_new_tokens)

    total = len(prompts) * len(methods)
    runs: list[PromptRun] = []
    replay: list[ReplayPrompt] = []  # each prompt with generate's output: what the policy rows' replay runs over
    for prompt in prompts:
        reference: list[int] | None = None
        for method in methods:
            token_ids, stats, elapsed = _timed(method, list(prompt.token_ids), settings.max_new_tokens, devices)
            run = PromptRun(method=method.name, prompt_id=prompt.id, token_ids=token_ids, time_s=elapsed, stats=stats)
            if method.name == BASELINE:
                reference = token_ids
                replay.append(ReplayPrompt(tuple(prompt.token_ids), tuple(token_ids)))
            else:
                run.divergence = classify(model, list(prompt.token_ids), reference, token_ids,
                                          verify_tokens=method.verify_tokens)
                if stats is not None and run.divergence.kind == "error":
                    log.warning("%s on prompt %s differs from generate's output (%s): the lossless guarantee failed",
                                method.name, prompt.id, run.divergence.describe())
            runs.append(run)
            if progress is not None:
                progress(len(runs), total, f"{prompt.id}: {method.name}")

    baseline = _summarise(methods[0], [r for r in runs if r.method == BASELINE], None, costs, replay)
    all_rows = [baseline] + [
        _summarise(m, [r for r in runs if r.method == m.name], baseline.tokens_per_s, costs, replay)
        for m in methods[1:]
    ]
    return BenchResult(rows=_table_rows(all_rows, settings), all_rows=all_rows, runs=runs, costs=costs,
                       settings=settings)


def _families(settings: BenchSettings) -> list[tuple[dict[str, int], Callable[[int], str]]]:
    """Methods run at several values of one parameter: (method name -> value, the table's label of the best)."""
    return [
        ({early_exit_name(e): e for e in settings.early_exit_layers},
         lambda e: f"assistant_early_exit (best E={e})"),
        ({prompt_lookup_name(n): n for n in settings.prompt_lookup_num_tokens},
         lambda n: f"{PROMPT_LOOKUP} (best N={n})"),
    ]


def _table_rows(all_rows: list[MethodRow], settings: BenchSettings) -> list[MethodRow]:
    """All rows, but each family of one method at several values (early exit's layers, prompt
    lookup's lengths) reduced to its fastest value, in the place of the family's first row."""
    rows = []
    for row in all_rows:
        family = next(((names, label) for names, label in _families(settings) if row.method in names), None)
        if family is None:
            rows.append(row)
            continue
        names, label = family
        members = [r for r in all_rows if r.method in names]
        if row is members[0]:
            best = max(members, key=lambda r: r.tokens_per_s)
            rows.append(dataclasses.replace(best, method=label(names[best.method])))
    return rows


# ---------------------------------------------------------------------------------------------
# The generate(custom_generate=...) row: transformers' own `generate` running skipsearch.hf's
# decoding method with the profile (BenchSettings.profile), as a deployment would call it. It
# decides with the bench's costs (or the profile's), carries what the policy learned across
# prompts in a PolicyMemory, and reports the decoder's counts like the skipsearch rows. Kept in this one
# block apart from the rows above.

CUSTOM_GENERATE = "generate custom_generate (profile)"


def _custom_generate_methods(model, settings: BenchSettings, policy_costs: RelativeCosts | None) -> list[_Method]:
    """The row, when the bench has a profile; the bench's draft-length and threshold apply as to
    the other rows, and its policy decides with `policy_costs` as the profile-policy row does."""
    if settings.profile is None:
        return []
    from skipsearch import hf

    profile = settings.profile
    decode_settings = hf.decode_settings(profile, max_draft_tokens=settings.max_draft_tokens,
                                         confidence_threshold=settings.confidence_threshold)
    if policy_costs is not None and decode_settings.costs is not None:
        decode_settings = dataclasses.replace(decode_settings, costs=policy_costs)
    memory = PolicyMemory()

    def run(prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], DecodeStats]:
        stats = DecodeStats()  # filled by the call
        call = _hf_generate(model, custom_generate=hf.self_speculative, skip_profile=profile,
                            max_draft_tokens=settings.max_draft_tokens,
                            confidence_threshold=settings.confidence_threshold, policy_memory=memory,
                            skip_stats=stats, policy_costs=policy_costs or "here")
        return call(prompt_ids, max_new_tokens)[0], stats

    return [_Method(CUSTOM_GENERATE, run, memory, verify_tokens=decode_settings.longest_draft + 1,
                    skip_set=profile.skip, decode_settings=decode_settings)]
