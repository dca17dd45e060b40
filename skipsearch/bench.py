"""Benchmark: self-speculative decoding beside transformers' own decoders, on the same prompts.

`run_bench` runs every method on every prompt in one process, interleaved (for each
prompt, each method in turn), so drift in the machine's speed hits all methods alike. The
baseline is greedy `model.generate`; every other method's output is checked against its
tokens (`lossless.classify`: identical, a tie flip in bfloat16/float16, or an error), and
the skipsearch methods get a predicted speedup from a cost model measured
on the same device, to set beside the measured one.

This module knows nothing about tokenizers, task files, printing or output files: it takes
prompt ids and returns rows; the CLI (`skipsearch bench`) does the rest.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from . import forward
from .costs import CostModel, measure_costs, predicted_speedup_from_stats
from .decoding import DecodeSettings, DecodeStats, FallbackMemory, decode
from .timing import synchronize
from .errors import SkipsearchError
from .lossless import KINDS, Divergence, classify
from .skipping import SkipSet, decoder_layers

log = logging.getLogger(__name__)

BASELINE = "generate"
NO_SKIP = "skipsearch (no skip)"
PROFILE = "skipsearch (profile)"
PROFILE_NO_FALLBACK = "skipsearch (profile, no fallback)"
EARLY_EXIT = "early-exit"
PROMPT_LOOKUP = "prompt lookup"


@dataclass(frozen=True)
class BenchPrompt:
    id: str
    token_ids: list[int]


@dataclass(frozen=True)
class BenchSettings:
    max_new_tokens: int = 96
    # the skip set to draft with; None benchmarks only the no-skip overhead
    skip_set: SkipSet | None = None
    max_draft_tokens: int = 8
    confidence_threshold: float = 0.8
    # layers E for generate(assistant_early_exit=E); () leaves early exit out
    early_exit_layers: tuple[int, ...] = (4, 8, 12, 16, 20, 24)
    # n-gram candidates per step for generate(prompt_lookup_num_tokens=...); 0 leaves prompt lookup out
    prompt_lookup_num_tokens: int = 5
    # repeats per configuration when measuring the cost model; 0 leaves predictions out
    cost_repeats: int = 5
    # new tokens of the warm-up run of each method on the first prompt; 0 skips the warm-up
    warmup_tokens: int = 8
    # seed of the cost model's random context ids (greedy decoding itself draws nothing)
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}"),
            (self.max_draft_tokens >= 1, f"max_draft_tokens must be >= 1, got {self.max_draft_tokens}"),
            (0.0 <= self.confidence_threshold <= 1.0,
             f"confidence_threshold must be in [0, 1], got {self.confidence_threshold}"),
            (all(e >= 1 for e in self.early_exit_layers),
             f"early-exit layers must be >= 1, got {list(self.early_exit_layers)}"),
            (self.prompt_lookup_num_tokens >= 0,
             f"prompt_lookup_num_tokens must be >= 0 (0 leaves it out), got {self.prompt_lookup_num_tokens}"),
            (self.cost_repeats >= 0, f"cost_repeats must be >= 0 (0 leaves predictions out), got {self.cost_repeats}"),
            (self.warmup_tokens >= 0, f"warmup_tokens must be >= 0 (0 skips the warm-up), got {self.warmup_tokens}"),
        ]
        for ok, message in checks:
            if not ok:
                raise SkipsearchError(message)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["skip_set"] = None if self.skip_set is None else {
            "attention": list(self.skip_set.attention), "mlp": list(self.skip_set.mlp)
        }
        out["early_exit_layers"] = list(self.early_exit_layers)
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
    ratio: float  # tokens_per_s / the baseline's
    acceptance_rate: float | None = None  # share of drafted tokens accepted (skipsearch methods)
    mean_accepted_tokens: float | None = None  # tokens committed per verify round (skipsearch methods)
    predicted_speedup: float | None = None  # the cost model's, from this row's counts (skipsearch methods)
    # prompts whose output is identical to the baseline's / differs by a tie flip / by an error;
    # None for the baseline
    identical: int | None = None
    tie_flips: int | None = None
    errors: int | None = None
    fell_back: int | None = None  # prompts on which the decoder switched to plain decoding

    @property
    def measured_speedup(self) -> float:
        return self.ratio

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["measured_speedup"] = self.measured_speedup
        return out


@dataclass
class BenchResult:
    rows: list[MethodRow]  # the table: early exit reduced to its fastest layer
    all_rows: list[MethodRow]  # every method, every early-exit layer
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
    memory: FallbackMemory | None = None  # the fallback's verdict carried across prompts, as a runtime would


def early_exit_name(layer: int) -> str:
    return f"{EARLY_EXIT} {layer}"


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


def _skipsearch_decode(model, skip_set: SkipSet, settings: BenchSettings, fallback: bool,
                       memory: FallbackMemory | None = None):
    def run(prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], DecodeStats]:
        decode_settings = DecodeSettings(
            max_new_tokens=max_new_tokens,
            max_draft_tokens=settings.max_draft_tokens,
            confidence_threshold=settings.confidence_threshold,
            fallback=fallback,
        )
        result = decode(model, prompt_ids, skip_set, decode_settings, memory=memory)
        return result.token_ids, result.stats

    return run


def _methods(model, settings: BenchSettings) -> list[_Method]:
    num_layers = len(decoder_layers(model))
    bad = [e for e in settings.early_exit_layers if e >= num_layers]
    if bad:
        raise SkipsearchError(
            f"early-exit layers {bad} are out of range for a model with {num_layers} decoder layers; "
            f"use 1..{num_layers - 1}"
        )
    methods = [
        _Method(BASELINE, _hf_generate(model)),
        _Method(NO_SKIP, _skipsearch_decode(model, SkipSet(), settings, fallback=True)),
    ]
    if settings.skip_set is not None and len(settings.skip_set):
        settings.skip_set.check_against(num_layers)
        memory = FallbackMemory()
        methods += [
            _Method(PROFILE, _skipsearch_decode(model, settings.skip_set, settings, fallback=True, memory=memory),
                    memory),
            _Method(PROFILE_NO_FALLBACK, _skipsearch_decode(model, settings.skip_set, settings, fallback=False)),
        ]
    methods += [
        _Method(early_exit_name(e), _hf_generate(model, assistant_early_exit=e)) for e in settings.early_exit_layers
    ]
    if settings.prompt_lookup_num_tokens:
        methods.append(
            _Method(PROMPT_LOOKUP, _hf_generate(model, prompt_lookup_num_tokens=settings.prompt_lookup_num_tokens))
        )
    return methods


def _timed(method: _Method, prompt_ids: list[int], max_new_tokens: int, device: torch.device):
    synchronize(device)
    start = time.perf_counter()
    token_ids, stats = method.generate(prompt_ids, max_new_tokens)
    synchronize(device)
    return token_ids, stats, time.perf_counter() - start



def _summarise(method: str, runs: list[PromptRun], baseline_tokens_per_s: float | None,
               costs: CostModel | None, skip_set: SkipSet) -> MethodRow:
    new_tokens = sum(len(r.token_ids) for r in runs)
    time_s = sum(r.time_s for r in runs)
    tokens_per_s = new_tokens / time_s if time_s else 0.0
    row = MethodRow(
        method=method,
        new_tokens=new_tokens,
        time_s=time_s,
        tokens_per_s=tokens_per_s,
        ratio=tokens_per_s / baseline_tokens_per_s if baseline_tokens_per_s else 1.0,
    )
    if method != BASELINE:
        kinds = [r.divergence.kind for r in runs]
        row.identical, row.tie_flips, row.errors = (kinds.count(kind) for kind in KINDS)
    if runs and runs[0].stats is not None:
        stats = DecodeStats.total([r.stats for r in runs])
        row.acceptance_rate = stats.acceptance_rate if stats.drafted_tokens else None
        row.mean_accepted_tokens = stats.mean_accepted_tokens if stats.rounds else None
        row.fell_back = sum(bool(r.stats.fell_back) for r in runs)
        if costs is not None:
            row.predicted_speedup = predicted_speedup_from_stats(costs, skip_set, stats)
    return row


def _cost_context(prompts: list[BenchPrompt], settings: BenchSettings, max_positions: int | None) -> int:
    """The context length at which decoding spends most of its steps: a typical prompt plus half the output."""
    context = int(statistics.median(len(p.token_ids) for p in prompts)) + settings.max_new_tokens // 2
    if max_positions is not None:
        context = min(context, max_positions - settings.max_draft_tokens - 1)
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
    device = forward.input_device(model)
    methods = _methods(model, settings)
    skip_set = settings.skip_set or SkipSet()

    costs = None
    if settings.cost_repeats:
        context = _cost_context(prompts, settings, getattr(model.config, "max_position_embeddings", None))
        log.info("measuring the cost model (context %d tokens, %d repeats)", context, settings.cost_repeats)
        costs = measure_costs(model, context_tokens=context, max_verify_tokens=settings.max_draft_tokens + 1,
                              repeats=settings.cost_repeats, seed=settings.seed)

    if settings.warmup_tokens:
        warmup_tokens = min(settings.warmup_tokens, settings.max_new_tokens)
        for method in methods:
            method.generate(prompts[0].token_ids, warmup_tokens)
            if method.memory is not None:
                method.memory.forget()  # the timed prompts pay for the first verdict themselves

    total = len(prompts) * len(methods)
    runs: list[PromptRun] = []
    for prompt in prompts:
        reference: list[int] | None = None
        for method in methods:
            token_ids, stats, elapsed = _timed(method, list(prompt.token_ids), settings.max_new_tokens, device)
            run = PromptRun(method=method.name, prompt_id=prompt.id, token_ids=token_ids, time_s=elapsed, stats=stats)
            if method.name == BASELINE:
                reference = token_ids
            else:
                run.divergence = classify(model, list(prompt.token_ids), reference, token_ids,
                                          verify_tokens=settings.max_draft_tokens + 1)
                if stats is not None and run.divergence.kind == "error":
                    log.warning("%s on prompt %s differs from generate's output (%s): the lossless guarantee failed",
                                method.name, prompt.id, run.divergence.describe())
            runs.append(run)
            if progress is not None:
                progress(len(runs), total, f"{prompt.id}: {method.name}")

    baseline = _summarise(BASELINE, [r for r in runs if r.method == BASELINE], None, costs, skip_set)
    all_rows = [baseline] + [
        _summarise(m.name, [r for r in runs if r.method == m.name], baseline.tokens_per_s, costs,
                   SkipSet() if m.name == NO_SKIP else skip_set)
        for m in methods
        if m.name != BASELINE
    ]
    return BenchResult(rows=_table_rows(all_rows, settings), all_rows=all_rows, runs=runs, costs=costs,
                       settings=settings)


def _table_rows(all_rows: list[MethodRow], settings: BenchSettings) -> list[MethodRow]:
    """All rows but early exit, which is reduced to its fastest layer, in the early-exit rows' place."""
    early_names = {early_exit_name(e): e for e in settings.early_exit_layers}
    early = [row for row in all_rows if row.method in early_names]
    rows = []
    for row in all_rows:
        if row.method not in early_names:
            rows.append(row)
        elif row is early[0]:
            best = max(early, key=lambda r: r.tokens_per_s)
            rows.append(dataclasses.replace(best, method=f"assistant_early_exit (best E={early_names[best.method]})"))
    return rows
