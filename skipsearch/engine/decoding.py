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

Which draft each round verifies — a plain step, the context's n-grams, the skipped model, or
both — is the runtime's choice (`drafting.DraftPolicy`, with this device's costs and what it
learns while decoding), run through the one round loop (`rounds.run_rounds`) that
`hf.self_speculative` and the search's replay share.

This module knows nothing about tokenizers, tasks or profiles: it takes and returns ids.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, fields
from typing import Callable

import torch
from transformers import DynamicCache

from skipsearch.engine import forward
from skipsearch.engine.costs import relative_costs
from skipsearch.engine.device_costs import costs_here
from skipsearch.engine.drafting import (
    DEFAULT_CONFIDENCE_THRESHOLD,
    DEFAULT_MAX_DRAFT_TOKENS,
    DraftPolicy,
    NgramIndex,
    NgramSettings,
    PolicyMemory,
    PolicySettings,
    Priors,
    RelativeCosts,
    ThroughputGuard,
)
from skipsearch.engine.forward import crop_cache
from skipsearch.engine.rounds import run_rounds
from skipsearch.engine.skipping import SkipSet, skipping
from skipsearch.engine.timing import Timeline
from skipsearch.errors import SkipsearchError


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
    # suspend drafting for a while whenever it proves slower than plain steps by the clock
    # (`drafting.ThroughputGuard`), which times `probe_steps` plain steps when it first needs them
    fallback: bool = True
    probe_steps: int = 2
    # draft from the context's n-grams too (prompt lookup); None drafts with the skip set only
    ngram: NgramSettings | None = NgramSettings()
    # what the drafting policy decides with: "here" (this device's costs, timed once and cached:
    # `device_costs`), given costs relative to a plain step, or None for no choice (the skip set
    # drafts every round at max_draft_tokens, else the whole n-gram draft)
    costs: RelativeCosts | str | None = "here"
    policy: PolicySettings = PolicySettings()
    # the search's evidence (a profile's priors), weighed with the policy's default prior
    priors: Priors | None = None

    @classmethod
    def plain(cls, max_new_tokens: int = 128, **fields) -> "DecodeSettings":
        """Plain decoding: nothing drafts, nothing is timed for a policy."""
        return cls(max_new_tokens=max_new_tokens, ngram=None, costs=None, fallback=False, **fields)

    def __post_init__(self) -> None:
        checks = [
            (self.max_new_tokens >= 1, "max_new_tokens must be >= 1"),
            (self.max_draft_tokens >= 1, "max_draft_tokens must be >= 1"),
            (0.0 <= self.confidence_threshold <= 1.0, "confidence_threshold must be in [0, 1]"),
            (self.temperature >= 0.0, "temperature must be >= 0 (0 is greedy)"),
            (0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]"),
            (self.top_k >= 0, "top_k must be >= 0 (0 disables it)"),
        ]
        if isinstance(self.costs, str) and self.costs != "here":
            checks.append((False, f'costs: expected "here", RelativeCosts or None, got {self.costs!r}'))
        for ok, message in checks:
            if not ok:
                raise SkipsearchError(message)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

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


class ForwardStep:
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


class Randomness:
    """A call's seeded generators, one per device and made on it the first time it draws there: a
    generator draws only on its own device, and a model split by hand gives its logits on its last
    device, not on the input's."""

    def __init__(self, seed: int | None):
        self.seed = torch.seed() if seed is None else seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def on(self, device: torch.device) -> torch.Generator:
        generator = self._generators.get(device)
        if generator is None:
            generator = self._generators[device] = torch.Generator(device=device)
            generator.manual_seed(self.seed)
        return generator


def _generator(randomness: Randomness | None, device: torch.device) -> torch.Generator | None:
    """The generator to draw with on `device`; None (torch's default one there, which `generate`'s
    seeding sets) without a `Randomness`."""
    return None if randomness is None else randomness.on(device)


def _sample(probs: torch.Tensor, usable: torch.Tensor, randomness: Randomness | None) -> torch.Tensor:
    """One token id drawn from `probs` where `usable`, else -1, without a device-to-host transfer.

    Where the probabilities are unusable (not finite) a uniform stand-in is sampled instead, so
    `multinomial` never sees them."""
    safe = torch.where(usable, probs, torch.ones_like(probs))
    return torch.where(usable, torch.multinomial(safe, 1, generator=_generator(randomness, probs.device))[0], -1)


def draft_tokens(forward_step: ForwardStep, skip_set: SkipSet, model, context: list[int], start: int, budget: int,
           settings: DecodeSettings, randomness: Randomness | None,
           stop_ids: set[int]) -> tuple[list[int], list[torch.Tensor], int]:
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
                chosen = _sample(probs, usable, randomness)
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


def verify_drafts(logits: torch.Tensor, drafts: list[int], draft_probs: list[torch.Tensor],
            settings: DecodeSettings, randomness: Randomness | None) -> tuple[int, int]:
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
        uniform = torch.rand(n, generator=_generator(randomness, logits.device), device=logits.device)
        rejected = uniform * q_drafts >= p_drafts
        stop = torch.where(rejected.any(), rejected.int().argmax(), n)
    else:
        stop = torch.tensor(0, device=logits.device)
    residual = (target_probs[stop] - q[stop]).clamp_min(0)
    total = residual.sum()
    # p == q up to rounding leaves no residual mass; sampling p is then exact
    replacement = torch.where(total > 0, residual / total, target_probs[stop])
    token = _sample(replacement, finite[: n + 1].all(), randomness)
    stop_at, next_token = torch.stack([stop, token]).tolist()
    if next_token < 0:
        raise _not_finite(logits.dtype)
    return stop_at, next_token


def point_mass(token: int, like: torch.Tensor) -> torch.Tensor:
    """q of a drafter that proposes `token` for certain: verification then accepts it with
    probability p(token) and otherwise samples p without it, renormalised."""
    q = torch.zeros(like.shape[-1], device=like.device, dtype=torch.float32)
    q[token] = 1.0
    return q


def choose_token(logits: torch.Tensor, settings: DecodeSettings, randomness: Randomness | None) -> int:
    finite = torch.isfinite(logits).all()
    if settings.greedy:
        token = int(torch.where(finite, logits.argmax(), -1))
    else:
        token = int(_sample(warp(logits, settings), finite, randomness))
    if token < 0:
        raise _not_finite(logits.dtype)
    return token


def resolve_costs(model, skip_set: SkipSet, settings: DecodeSettings, prompt_tokens: int,
                  new_tokens: int) -> DecodeSettings:
    """The settings with `costs="here"` replaced by this device's costs relative to a plain step,
    timed once per machine (`device_costs` caches them) at the context a call with this prompt and
    output length spends most of its steps at: the prompt and half the output. Every caller (the
    decoder, custom_generate, the bench's warm-up) goes through here, so they share one cache
    entry. Nothing is timed where nothing drafts."""
    if settings.costs != "here":
        return settings
    if not len(skip_set) and settings.ngram is None:
        return dataclasses.replace(settings, costs=None)
    here = costs_here(model, prompt_tokens + new_tokens // 2, settings.longest_draft + 1)
    return dataclasses.replace(settings, costs=relative_costs(here, skip_set))


def new_policy(settings: DecodeSettings, skip_set: SkipSet, memory: PolicyMemory | None) -> DraftPolicy:
    """The drafting policy of one call (costs resolved: `resolve_costs`)."""
    return DraftPolicy(settings.costs, settings.policy, settings.ngram, layer_skip=len(skip_set) > 0,
                       max_draft_tokens=settings.max_draft_tokens, priors=settings.priors, memory=memory)


def new_guard(settings: DecodeSettings) -> ThroughputGuard | None:
    return ThroughputGuard(probe_steps=settings.probe_steps) if settings.fallback else None


class _Decoding:
    """The decoder's side of a round (`rounds.RoundBackend`): the model, its cache, the ids."""

    def __init__(self, model, prompt_ids: list[int], skip_set: SkipSet, settings: DecodeSettings,
                 randomness: Randomness | None, on_tokens: Callable[[list[int]], None] | None):
        self.model, self.skip_set, self.settings, self.randomness = model, skip_set, settings, randomness
        self.prompt_ids, self.on_tokens = prompt_ids, on_tokens
        self.device = forward.input_device(model)
        self.clock = Timeline(forward.model_devices(model))
        self.stop_ids = eos_token_ids(model)
        self.cache = forward.new_cache()
        self.step = ForwardStep(model, self.cache, self.device)
        self.index = NgramIndex(settings.ngram, prompt_ids) if settings.ngram is not None else None
        self.generated: list[int] = []
        self.done = False
        self.logits: torch.Tensor | None = None  # the last full-model logits: point masses are made like them

    @property
    def new_tokens(self) -> int:
        return len(self.generated)

    @property
    def length(self) -> int:
        """Positions with full-model KV: every committed token but the pending one."""
        return len(self.prompt_ids) + len(self.generated) - 1

    def commit(self, tokens: list[int]) -> None:
        """Append tokens up to EOS or the length limit."""
        for i, token in enumerate(tokens):
            if token in self.stop_ids or len(self.generated) + i + 1 >= self.settings.max_new_tokens:
                tokens, self.done = tokens[: i + 1], True
                break
        self.generated.extend(tokens)
        if self.index is not None:
            self.index.extend(tokens)
        if self.on_tokens is not None:
            self.on_tokens(tokens)

    def prefill(self) -> None:
        self.logits = self.step(self.prompt_ids, 0, logits_to_keep=1)[-1]
        self.commit([choose_token(self.logits, self.settings, self.randomness)])

    def budget(self) -> int:
        return min(self.settings.longest_draft, self.settings.max_new_tokens - len(self.generated) - 1)

    def proposal(self) -> tuple[list[int], int]:
        return self.index.propose() if self.index is not None else ([], 0)

    def plain(self) -> None:
        self.logits = self.step([self.generated[-1]], self.length)[-1]
        self.commit([choose_token(self.logits, self.settings, self.randomness)])

    def point_masses(self, tokens) -> list[torch.Tensor]:
        # a proposal from the context is a point mass: accepted with probability p(token)
        return [] if self.settings.greedy else [point_mass(token, self.logits) for token in tokens]

    def draft(self, after, budget: int):
        tokens, probs, steps = draft_tokens(self.step, self.skip_set, self.model, [self.generated[-1], *after],
                                            self.length, budget, self.settings, self.randomness, self.stop_ids)
        crop_cache(self.cache, self.length)
        return tokens, probs, steps

    def verify(self, drafts, draft_probs) -> int:
        length = self.length
        logits = self.step([self.generated[-1], *drafts], length)
        accepted, next_token = verify_drafts(logits, list(drafts), list(draft_probs), self.settings, self.randomness)
        crop_cache(self.cache, length + 1 + accepted)
        self.logits = logits[accepted]
        self.commit(list(drafts[:accepted]) + [next_token])
        return accepted


def decode(
    model,
    prompt_ids: list[int] | torch.Tensor,
    skip_set: SkipSet | None = None,
    settings: DecodeSettings = DecodeSettings(),
    on_tokens: Callable[[list[int]], None] | None = None,
    memory: PolicyMemory | None = None,
) -> DecodeResult:
    """Generate after `prompt_ids`, drafting with the skip set and the context's n-grams under the
    drafting policy (`DecodeSettings.plain()` decodes plainly).

    A `memory` shared by calls carries what the policy learned from call to call."""
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
    settings = resolve_costs(model, skip_set, settings, len(prompt_ids), settings.max_new_tokens)
    randomness = None if settings.greedy else Randomness(settings.seed)
    stats = DecodeStats()
    backend = _Decoding(model, list(prompt_ids), skip_set, settings, randomness, on_tokens)
    policy = new_policy(settings, skip_set, memory)
    with torch.inference_mode():
        clock = backend.clock
        start = clock.mark()
        backend.prefill()
        prefilled = clock.mark()
        run_rounds(backend, policy, new_guard(settings), stats, drafts=len(skip_set) > 0 or settings.ngram is not None)
        end = clock.mark()
        stats.prefill_time_s, stats.total_time_s = clock.seconds(start, prefilled), clock.seconds(start, end)
    stats.new_tokens = len(backend.generated)
    policy.remember()
    return DecodeResult(token_ids=backend.generated, stats=stats)
