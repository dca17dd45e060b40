"""Self-speculative decoding: the skipped model drafts, the full model verifies.

Each round the model with `skip_set` left out drafts up to `max_draft_tokens` tokens one at
a time (stopping early when its top-1 probability falls below `confidence_threshold`),
then the full model scores the pending token and every draft in one forward pass. The
accepted prefix plus one token of the full model's own are committed, so greedy output is
token-for-token the full model's, and sampled output follows the full model's
distribution (speculative sampling: accept with probability min(1, p/q), else resample
from the normalised residual max(0, p - q)).

The KV cache holds the full model's keys and values of every committed token but the
last, which is pending. Drafting appends approximate entries to the layers it runs; they
are cropped before verification, and verification's entries past the accepted prefix are
cropped after it. Positions are always passed explicitly because a skipped attention
layer's cache falls behind the others while drafting.

This module knows nothing about tokenizers, tasks or profiles: it takes and returns ids.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Callable

import torch
from transformers import DynamicCache

from skipsearch.engine import forward
from skipsearch.engine.drafting import (
    DEFAULT_CONFIDENCE_THRESHOLD,
    DEFAULT_MAX_DRAFT_TOKENS,
    NGRAM,
    PLAIN,
    Choice,
    DraftPolicy,
    NgramIndex,
    NgramSettings,
    PolicySettings,
    RelativeCosts,
    count_round,
)
from skipsearch.engine.skipping import SkipSet, skipping
from skipsearch.engine.timing import device_time, median
from skipsearch.errors import SkipsearchError


class FallbackRule:
    """The fallback of one call, shared by skipsearch's decoder and `hf.self_speculative`: the first
    `probe_steps` steps decode plainly and are timed; once `fallback_rounds` drafting rounds have
    cost more per committed token than the median probe step, the call decodes plainly to its end.
    With a memory that remembers a recent fallback (`remembers_verdicts`), the call decodes plainly
    from its first token."""

    def __init__(self, settings: "DecodeSettings", stats: "DecodeStats", memory: "FallbackMemory | None",
                 drafts: bool) -> None:
        self.settings, self.stats, self.memory = settings, stats, memory
        self.plain_step_times: list[float] = []
        self.spec_time, self.spec_tokens, self.spec_attempts = 0.0, 0, 0
        self.remembered = drafts and settings.remembers_verdicts and memory is not None and memory.take_plain_call()
        self.speculate = drafts and not self.remembered
        if self.remembered:
            stats.fell_back, stats.fallback_at_token = True, 0

    def choose(self, policy: DraftPolicy, index: NgramIndex | None, budget: int) -> Choice:
        """This round's draft: a plain step while probing or once fallen back, else the policy's."""
        probing = len(self.plain_step_times) < self.settings.probe_steps and self.settings.fallback
        if not self.speculate or probing:
            return Choice(PLAIN)
        proposal, match = index.propose() if index is not None else ([], 0)
        return policy.choose(budget, proposal, match)

    def plain_step(self, seconds: float) -> None:
        self.stats.plain_time_s += seconds
        if len(self.plain_step_times) < self.settings.probe_steps and self.settings.fallback:
            self.plain_step_times.append(seconds)

    def drafting_round(self, seconds: float, committed: int, new_tokens: int) -> None:
        """A round that drafted took `seconds` and committed `committed` tokens; `new_tokens` so far."""
        self.spec_time += seconds
        self.spec_tokens += committed
        self.spec_attempts += 1
        if (self.settings.fallback and self.plain_step_times and self.spec_attempts >= self.settings.fallback_rounds
                and self.spec_time / self.spec_tokens > median(self.plain_step_times)):
            self.speculate = False
            self.stats.fell_back = True
            self.stats.fallback_at_token = new_tokens

    def finish(self) -> None:
        """Leave the call's verdict in the memory; a call too short to have judged says nothing."""
        judged = self.stats.fell_back or self.spec_attempts >= self.settings.fallback_rounds
        if self.memory is not None and self.settings.remembers_verdicts and not self.remembered and judged:
            self.memory.record(self.stats.fell_back)


class FallbackMemory:
    """The fallback's verdict on one skip set, carried from call to call by a runtime that
    decodes many prompts with one profile. Once a call fell back, the next `recheck_every - 1`
    calls decode plainly from their first token instead of paying again for drafting to prove
    slower; then one call checks again, because the machine's load, and so the verdict, can
    change. Use one memory per skip set and draft settings."""

    def __init__(self, recheck_every: int = 8) -> None:
        if recheck_every < 1:
            raise SkipsearchError(f"recheck_every must be >= 1, got {recheck_every}")
        self.recheck_every = recheck_every
        self.plain_calls_left = 0

    def take_plain_call(self) -> bool:
        """Whether this call should decode plainly because an earlier one fell back."""
        if self.plain_calls_left > 0:
            self.plain_calls_left -= 1
            return True
        return False

    def record(self, fell_back: bool) -> None:
        self.plain_calls_left = self.recheck_every - 1 if fell_back else 0

    def forget(self) -> None:
        self.plain_calls_left = 0


@dataclass(frozen=True)
class DecodeSettings:
    max_new_tokens: int = 128
    max_draft_tokens: int = DEFAULT_MAX_DRAFT_TOKENS
    # stop drafting when the draft's top-1 probability is lower than this; 0 never stops early
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD
    # 0 means greedy; otherwise speculative sampling with the warped distribution
    temperature: float = 0.0
    top_p: float = 1.0
    # 0 means no top-k filtering
    top_k: int = 0
    seed: int | None = None
    # switch to plain decoding for the rest of a call once drafting proves slower
    fallback: bool = True
    # plain steps timed at the start of a call: the speed drafting has to beat
    probe_steps: int = 2
    # rounds measured before the fallback may trigger; with a cost-model policy (costs given) it
    # waits `policy_fallback_rounds` instead: the policy's first rounds explore on its priors and
    # learn from them, and only judging it later keeps a drafter that pays (policies that cannot
    # pay are refused by the policy itself)
    fallback_min_rounds: int = 2
    policy_fallback_rounds: int = 8
    # draft from the context's n-grams too (prompt lookup); None drafts with the skip set only
    ngram: NgramSettings | None = None
    # what the drafting policy decides with: costs relative to a plain step (None: no choice,
    # the skip set drafts every round at max_draft_tokens) and its priors and margin
    costs: RelativeCosts | None = None
    policy: PolicySettings = PolicySettings()

    def __post_init__(self) -> None:
        checks = [
            (self.max_new_tokens >= 1, "max_new_tokens must be >= 1"),
            (self.max_draft_tokens >= 1, "max_draft_tokens must be >= 1"),
            (0.0 <= self.confidence_threshold <= 1.0, "confidence_threshold must be in [0, 1]"),
            (self.temperature >= 0.0, "temperature must be >= 0 (0 is greedy)"),
            (0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]"),
            (self.top_k >= 0, "top_k must be >= 0 (0 disables it)"),
        ]
        for ok, message in checks:
            if not ok:
                raise SkipsearchError(message)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def remembers_verdicts(self) -> bool:
        """Whether a `FallbackMemory` carries the fallback's verdict from call to call: for the fixed
        rule only. A cost-model policy learns each drafter's acceptance within the call and its
        n-gram drafts depend on the prompt, so one prompt's verdict says nothing about the next
        (a translation prompt that copies nothing would stop n-gram drafts on those that copy)."""
        return self.fallback and self.costs is None

    @property
    def fallback_rounds(self) -> int:
        return self.fallback_min_rounds if self.costs is None else self.policy_fallback_rounds

    @property
    def longest_draft(self) -> int:
        """The most tokens one round may draft: an n-gram draft the skipped model continues (the
        policy keeps each drafter to its own limit, and every round to the verify passes its
        costs cover)."""
        return self.max_draft_tokens + (self.ngram.max_tokens if self.ngram else 0)


@dataclass
class DecodeStats:
    new_tokens: int = 0
    rounds: int = 0  # full-model verify passes that followed a draft
    drafted_tokens: int = 0
    draft_steps: int = 0  # forward passes of the skipped model, including ones whose token was not confident
    accepted_tokens: int = 0
    plain_steps: int = 0  # full-model steps without a draft (probe, fallback, no confident draft)
    # the n-gram drafter's share of rounds, drafted and accepted tokens
    ngram_rounds: int = 0
    ngram_drafted_tokens: int = 0
    ngram_accepted_tokens: int = 0
    # rounds whose n-gram draft the skipped model continued (neither n-gram nor layer-skip rounds)
    ngram_layer_skip_rounds: int = 0
    prefill_time_s: float = 0.0
    draft_time_s: float = 0.0
    verify_time_s: float = 0.0
    plain_time_s: float = 0.0
    total_time_s: float = 0.0
    fell_back: bool = False
    fallback_at_token: int | None = None

    @classmethod
    def total(cls, runs: "list[DecodeStats]") -> "DecodeStats":
        """Counters and times added up over several calls; `fell_back` says whether any call fell back
        (`fallback_at_token` is per call and left unset)."""
        total = cls()
        for stats in runs:
            for f in fields(cls):
                if f.type in ("int", "float"):
                    setattr(total, f.name, getattr(total, f.name) + getattr(stats, f.name))
            total.fell_back = total.fell_back or stats.fell_back
        return total

    @property
    def acceptance_rate(self) -> float:
        """Share of drafted tokens the full model accepted."""
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else 0.0

    @property
    def layer_skip_rounds(self) -> int:
        """Rounds drafted by the skipped model alone."""
        return self.rounds - self.ngram_rounds - self.ngram_layer_skip_rounds

    @property
    def mean_accepted_tokens(self) -> float:
        """Tokens committed per verify round: accepted drafts plus the full model's own token."""
        return (self.accepted_tokens + self.rounds) / self.rounds if self.rounds else 0.0

    @property
    def decoding_time_s(self) -> float:
        """The time after the prefill (which made the first token): what drafting can speed up."""
        return self.total_time_s - self.prefill_time_s

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.total_time_s if self.total_time_s else 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(
            acceptance_rate=self.acceptance_rate,
            mean_accepted_tokens=self.mean_accepted_tokens,
            tokens_per_s=self.tokens_per_s,
        )
        return out


@dataclass
class DecodeResult:
    token_ids: list[int]  # generated ids only
    stats: DecodeStats = field(default_factory=DecodeStats)


def eos_token_ids(model) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def crop_cache(cache: DynamicCache, length: int) -> None:
    """Drop every layer's entries past `length`; layers may differ in length after drafting."""
    for layer in cache.layers:
        excess = layer.get_seq_length() - length
        if excess > 0:
            layer.crop(-excess)


def warp(logits: torch.Tensor, settings: DecodeSettings) -> torch.Tensor:
    """Probabilities after temperature, top-k and top-p, the same for draft and target."""
    logits = logits.float() / settings.temperature
    if settings.top_k:
        kth = torch.topk(logits, min(settings.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if settings.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token once the tokens before it already cover top_p; the first always stays
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= settings.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(-1)


class _Forward:
    """One forward step on the shared cache at explicit positions; returns last-layer logits."""

    def __init__(self, model, cache: DynamicCache, device: torch.device):
        self.model, self.cache, self.device = model, cache, device

    def __call__(self, token_ids: list[int], start: int, logits_to_keep: int = 0) -> torch.Tensor:
        ids = torch.tensor([token_ids], device=self.device)
        return forward.run(self.model, self.cache, ids, start, logits_to_keep=logits_to_keep).logits[0]  # (kept, vocab)


def _not_finite(dtype: torch.dtype) -> SkipsearchError:
    name = str(dtype).removeprefix("torch.")
    better = "float32 or bfloat16" if dtype == torch.float16 else "float32"
    return SkipsearchError(f"the full model's logits are not finite (NaN or inf) in {name}: its activations overflow "
                           f"in this precision; load it in {better} (--dtype)")


def _sample(probs: torch.Tensor, usable: torch.Tensor, generator) -> torch.Tensor:
    """One token id drawn from `probs` where `usable`, else -1, without a device-to-host transfer.

    Where the probabilities are unusable (not finite) a uniform stand-in is sampled instead, so
    `multinomial` never sees them."""
    safe = torch.where(usable, probs, torch.ones_like(probs))
    return torch.where(usable, torch.multinomial(safe, 1, generator=generator)[0], -1)


def _draft(forward_step: _Forward, skip_set: SkipSet, model, context: list[int], start: int, budget: int,
           settings: DecodeSettings, generator, stop_ids: set[int]) -> tuple[list[int], list[torch.Tensor], int]:
    """Draft up to `budget` tokens after `context` (the pending token, and the n-gram draft's
    tokens where the skipped model continues one), read in one pass from position `start`;
    returns the tokens, when sampling their q, and the number of forward passes it took.

    Each step moves one number to the host: the drafted token, or -1 where the draft stops
    (not confident enough, or logits that are not finite, which fail every comparison)."""
    tokens: list[int] = []
    draft_probs: list[torch.Tensor] = []
    inputs, position = list(context), start
    steps = 0
    threshold = settings.confidence_threshold
    with skipping(model, skip_set):
        for _ in range(budget):
            logits = forward_step(inputs, position, logits_to_keep=1)[-1]  # (vocab,)
            position += len(inputs)
            steps += 1
            if settings.greedy:
                if threshold > 0:
                    confidence, best = logits.float().softmax(-1).max(-1)
                    chosen = torch.where(confidence >= threshold, best, -1)
                else:
                    chosen = torch.where(torch.isfinite(logits).all(), logits.argmax(), -1)
            else:
                probs = warp(logits, settings)
                usable = torch.isfinite(probs).all() & (probs.max() >= threshold)
                chosen = _sample(probs, usable, generator)
            token = int(chosen)
            if token < 0:
                break
            if not settings.greedy:
                draft_probs.append(probs)
            tokens.append(token)
            inputs = [token]
            if token in stop_ids:
                break
    return tokens, draft_probs, steps


def _verify(logits: torch.Tensor, drafts: list[int], draft_probs: list[torch.Tensor],
            settings: DecodeSettings, generator) -> tuple[int, int]:
    """Given the full model's logits at the pending token and each draft, return
    (number of drafts accepted, the full model's next token), with one device-to-host transfer."""
    finite = torch.isfinite(logits).all(-1)  # (len(drafts) + 1,)
    if settings.greedy:
        targets = torch.where(finite, logits.argmax(-1), -1).tolist()
        accepted = 0
        while accepted < len(drafts) and drafts[accepted] == targets[accepted]:
            accepted += 1
        if targets[accepted] < 0:
            raise _not_finite(logits.dtype)
        return accepted, targets[accepted]
    n = len(drafts)
    target_probs = warp(logits, settings)  # (n + 1, vocab)
    # accept draft i with probability min(1, p/q); the first rejection resamples from the
    # normalised residual max(0, p - q), and with none the token after the drafts comes from p
    q = (torch.cat([torch.stack(draft_probs), torch.zeros_like(target_probs[:1])]) if n
         else torch.zeros_like(target_probs))
    if n:
        index = torch.arange(n, device=logits.device)
        ids = torch.tensor(drafts, device=logits.device)
        p_drafts, q_drafts = target_probs[index, ids], q[index, ids]
        rejected = torch.rand(n, generator=generator, device=logits.device) * q_drafts >= p_drafts
        stop = torch.where(rejected.any(), rejected.int().argmax(), n)
    else:
        stop = torch.tensor(0, device=logits.device)
    residual = (target_probs[stop] - q[stop]).clamp_min(0)
    total = residual.sum()
    # p == q up to rounding leaves no residual mass; sampling p is then exact
    replacement = torch.where(total > 0, residual / total, target_probs[stop])
    token = _sample(replacement, finite[: n + 1].all(), generator)
    stop_at, next_token = torch.stack([stop, token]).tolist()
    if next_token < 0:
        raise _not_finite(logits.dtype)
    return stop_at, next_token


def _point_mass(token: int, like: torch.Tensor) -> torch.Tensor:
    """q of a drafter that proposes `token` for certain: verification then accepts it with
    probability p(token) and otherwise samples p without it, renormalised."""
    q = torch.zeros(like.shape[-1], device=like.device, dtype=torch.float32)
    q[token] = 1.0
    return q


def _choose(logits: torch.Tensor, settings: DecodeSettings, generator) -> int:
    finite = torch.isfinite(logits).all()
    if settings.greedy:
        token = int(torch.where(finite, logits.argmax(), -1))
    else:
        token = int(_sample(warp(logits, settings), finite, generator))
    if token < 0:
        raise _not_finite(logits.dtype)
    return token


def decode(
    model,
    prompt_ids: list[int] | torch.Tensor,
    skip_set: SkipSet | None = None,
    settings: DecodeSettings = DecodeSettings(),
    on_tokens: Callable[[list[int]], None] | None = None,
    memory: FallbackMemory | None = None,
) -> DecodeResult:
    """Generate after `prompt_ids`; with an empty or missing skip set this is plain decoding.

    With a `memory` shared by calls, a call that follows one that fell back decodes plainly
    from the start (`fell_back` with `fallback_at_token` 0) until the memory rechecks; with the
    fixed rule only (`DecodeSettings.remembers_verdicts`)."""
    if isinstance(prompt_ids, torch.Tensor):
        if prompt_ids.dim() == 2:
            if prompt_ids.shape[0] != 1:
                raise SkipsearchError(
                    f"batch size {prompt_ids.shape[0]} is not supported: the self-speculative "
                    "decoder takes one prompt at a time; call it per prompt"
                )
            prompt_ids = prompt_ids[0]
        prompt_ids = prompt_ids.tolist()
    if not prompt_ids:
        raise SkipsearchError("the prompt is empty; give at least one token")
    skip_set = skip_set or SkipSet()
    device = forward.input_device(model)
    stop_ids = eos_token_ids(model)
    generator = None
    if not settings.greedy:
        generator = torch.Generator(device=device)
        generator.manual_seed(settings.seed if settings.seed is not None else torch.seed())

    stats = DecodeStats()
    generated: list[int] = []
    cache = forward.new_cache()
    step = _Forward(model, cache, device)
    fallback = FallbackRule(settings, stats, memory, drafts=len(skip_set) > 0 or settings.ngram is not None)
    policy = DraftPolicy(settings.costs, settings.policy, settings.ngram, layer_skip=len(skip_set) > 0,
                         max_draft_tokens=settings.max_draft_tokens)
    index = NgramIndex(settings.ngram, prompt_ids) if settings.ngram is not None else None

    def commit(tokens: list[int]) -> bool:
        """Append tokens up to EOS or the length limit; True when generation is over."""
        done = False
        for i, token in enumerate(tokens):
            if token in stop_ids or len(generated) + i + 1 >= settings.max_new_tokens:
                tokens, done = tokens[: i + 1], True
                break
        generated.extend(tokens)
        if index is not None:
            index.extend(tokens)
        if on_tokens is not None:
            on_tokens(tokens)
        return done

    with torch.inference_mode():
        start = device_time(device)
        logits = step(prompt_ids, 0, logits_to_keep=1)[-1]
        done = commit([_choose(logits, settings, generator)])
        stats.prefill_time_s = device_time(device) - start

        while not done:
            length = len(prompt_ids) + len(generated) - 1  # positions with full-model KV
            pending = generated[-1]
            budget = min(settings.longest_draft, settings.max_new_tokens - len(generated) - 1)
            choice = fallback.choose(policy, index, budget)
            if choice.kind == PLAIN:
                step_start = device_time(device)
                logits = step([pending], length)[-1]
                done = commit([_choose(logits, settings, generator)])
                count_round(stats, choice, 0, 0, 0)
                fallback.plain_step(device_time(device) - step_start)
                continue

            round_start = device_time(device)
            # a proposal from the context is a point mass: accepted with probability p(token)
            drafts = list(choice.tokens)
            draft_probs = [] if settings.greedy else [_point_mass(token, logits) for token in drafts]
            steps = 0
            if choice.kind != NGRAM:
                more, more_probs, steps = _draft(step, skip_set, model, [pending] + drafts, length,
                                                 choice.draft_tokens, settings, generator, stop_ids)
                drafts, draft_probs = drafts + more, draft_probs + more_probs
                crop_cache(cache, length)
            verify_start = device_time(device)
            logits = step([pending] + drafts, length)
            accepted, next_token = _verify(logits, drafts, draft_probs, settings, generator)
            crop_cache(cache, length + 1 + accepted)
            done = commit(drafts[:accepted] + [next_token])
            round_end = device_time(device)

            stats.draft_time_s += verify_start - round_start
            stats.verify_time_s += round_end - verify_start
            count_round(stats, choice, len(drafts), accepted, steps)
            policy.record(choice, len(drafts), accepted)
            fallback.drafting_round(round_end - round_start, accepted + 1, len(generated))

        stats.total_time_s = device_time(device) - start
    stats.new_tokens = len(generated)
    fallback.finish()
    return DecodeResult(token_ids=generated, stats=stats)
