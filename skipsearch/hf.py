"""A skipsearch profile inside transformers' own `generate`: the `custom_generate` decoding method.

`generate(custom_generate=...)` is transformers' public extension point. With a callable it
prepares the inputs as usual — the logits processors and warpers built from the generation
config (repetition penalty, bad words, temperature, top-k, top-p, ...), the stopping criteria
(`max_new_tokens`/`max_length`, every EOS id, stop strings, custom criteria) — and hands them to
the callable instead of running its own loop:

    model.generate(**inputs, custom_generate=self_speculative, skip_profile="profile.yaml")

`self_speculative` drafts and verifies as `decoding.decode` does (the profile's skip set, its
n-gram drafter and its drafting policy, `drafting.DraftPolicy`), on skipsearch's own cache
(`forward.new_cache()`; the one `generate` prepared cannot be cropped where layers slide), and
applies generate's logits processors at every position it scores: at verify position i they see
the prompt, the tokens committed so far and drafts[:i], exactly what `generate` would show them
at that token. So:

- greedy (`do_sample=False`): a draft is accepted iff it is the argmax of the *processed* verify
  scores at its position, so the output is `generate(do_sample=False, ...)`'s, token for token
  in float32, with any processors;
- sampling (`do_sample=True`): drafts are sampled from the processed draft scores and verified by
  speculative sampling against the processed verify scores (n-gram drafts as point masses), so
  samples follow the distribution `generate` samples from.

The stopping criteria are checked after every committed token, so generation stops where
`generate` stops, also inside an accepted draft; a round never drafts past `max_length`. The
call returns what `generate` returns: the prompt and the new ids, or a `GenerateDecoderOnlyOutput`
with `return_dict_in_generate=True` (with `scores` and `logits` when asked for, and the cache).
One sequence at a time.

`generate_from_export` is what the folder `skipsearch export-hf` writes calls
(`custom_generate/generate.py`): transformers hands a Hub or local `custom_generate` method
`generate`'s raw arguments, and it calls `generate` again with `self_speculative` and the profile
embedded in the folder.

Streaming: `generate` puts the prompt into `streamer` itself, but transformers 5.20-5.24 pass the
streamer on only to their own decoding methods, not to a `custom_generate` callable; the callable
takes it from its arguments where transformers passes it, else from the nearest `generate` frame up
the stack, so `TextStreamer`/`TextIteratorStreamer` get the committed tokens round by round and
`end()` at the end (also when the call fails, so no reader waits forever).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import sys
import weakref
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import GenerationMixin, StoppingCriteriaList
from transformers.generation.utils import GenerateDecoderOnlyOutput

from skipsearch.config.profiles import (
    Profile,
    ProfileModel,
    check_profile_for_model,
    decode_settings_for,
    load_profile,
    parse_profile,
)
from skipsearch.engine import forward
from skipsearch.engine.decoding import (
    DecodeSettings,
    DecodeStats,
    ForwardStep,
    choose_token,
    draft_tokens,
    new_guard,
    new_policy,
    point_mass,
    resolve_costs,
    verify_drafts,
)
from skipsearch.engine.drafting import NgramIndex, PolicyMemory, RelativeCosts
from skipsearch.engine.forward import crop_cache
from skipsearch.engine.models import model_fingerprint
from skipsearch.engine.rounds import run_rounds
from skipsearch.engine.skipping import SkipSet
from skipsearch.engine.timing import Timeline
from skipsearch.errors import SkipsearchError

# what `generate` puts in the model kwargs it hands a decoding method, all of which this method
# replaces by its own (positions, cache) or needs no more; anything else is a model input it cannot take
_PREPARED_KWARGS = frozenset({"attention_mask", "position_ids", "cache_position", "logits_to_keep", "use_cache",
                              "cache", "past_key_values"})
_GENERATE_CODE = inspect.unwrap(GenerationMixin.generate).__code__
_OUTPUT_CACHE_FIELD = "cache" if "cache" in GenerateDecoderOnlyOutput.__dataclass_fields__ else "past_key_values"


# ---------------------------------------------------------------------------------------------
# the profile: loaded once per file version, checked once per model, one policy memory per profile


@dataclasses.dataclass
class _ModelState:
    fingerprint: str | None = None
    fits: set[ProfileModel] = dataclasses.field(default_factory=set)  # profiles' models checked against it
    memories: dict[tuple, PolicyMemory] = dataclasses.field(default_factory=dict)


_states: weakref.WeakKeyDictionary[torch.nn.Module, _ModelState] = weakref.WeakKeyDictionary()
_loaded: dict[tuple[str, int, int], Profile] = {}


def _state(model) -> _ModelState:
    state = _states.get(model)
    if state is None:
        state = _states[model] = _ModelState()
    return state


def _resolve_profile(skip_profile: Any) -> Profile:
    if isinstance(skip_profile, Profile):
        return skip_profile
    if skip_profile is None:
        raise SkipsearchError("self_speculative needs skip_profile=: the path of a profile .yaml or a loaded "
                              "skipsearch Profile (generate(custom_generate=self_speculative, skip_profile=...))")
    if not isinstance(skip_profile, (str, os.PathLike)):
        raise SkipsearchError(f"skip_profile must be a profile path or a skipsearch Profile, "
                              f"got a {type(skip_profile).__name__}")
    path = Path(skip_profile)
    try:
        status = path.stat()
        key = (str(path.resolve()), status.st_mtime_ns, status.st_size)
    except OSError:
        return load_profile(path)  # its one-line error says what is wrong with the path
    if key not in _loaded:
        _loaded[key] = load_profile(path)
    return _loaded[key]


def check_once(model, profile: Profile) -> None:
    """`profiles.check_profile_for_model`, with the model's fingerprint computed once per model
    object and a passed check remembered per (model, profile's model)."""
    state = _state(model)
    if profile.model in state.fits:
        return
    if state.fingerprint is None:
        state.fingerprint = model_fingerprint(model)
    check_profile_for_model(profile, model, fingerprint=state.fingerprint)
    state.fits.add(profile.model)


def decode_settings(profile: Profile | None, do_sample: bool = False, max_draft_tokens: int | None = None,
                    confidence_threshold: float | None = None, fallback: bool = True, plain: bool = False,
                    policy_costs: str = "here") -> DecodeSettings:
    """The decoder settings `self_speculative` drafts with: the profile's (`profiles.decode_fields`)
    with the overrides given; without a profile, n-gram drafting under the default policy;
    `plain`: nothing drafts.

    Sampling is `temperature` 1 with no top-k/top-p here because the scores it samples from are
    already generate's processed ones, warpers included."""
    temperature = 1.0 if do_sample else 0.0
    if plain:
        return DecodeSettings(temperature=temperature, ngram=None, costs=None, fallback=False)
    overrides = {key: value for key, value in (("max_draft_tokens", max_draft_tokens),
                                               ("confidence_threshold", confidence_threshold)) if value is not None}
    if profile is None:
        return DecodeSettings(temperature=temperature, fallback=fallback, **overrides)
    return decode_settings_for(profile, policy_costs, temperature=temperature, fallback=fallback, **overrides)


# ---------------------------------------------------------------------------------------------
# what generate hands over, checked


def _streamer_from_generate(streamer):
    """The streamer given to `generate`: passed in where transformers passes it, else read from the
    nearest `generate` frame up the stack (5.20-5.24 put the prompt into it and then drop it for a
    callable); the whole stack is searched, so helpers transformers puts between them do not hide it."""
    if streamer is not None:
        return streamer
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is _GENERATE_CODE:
            return frame.f_locals.get("streamer")
        frame = frame.f_back
    return None


def _check_call(model, input_ids: torch.Tensor, generation_config, synced_gpus: bool, model_kwargs: dict) -> None:
    if getattr(model.config, "is_encoder_decoder", False):
        raise SkipsearchError("self_speculative decodes decoder-only causal LMs; this model is an encoder-decoder")
    if (getattr(generation_config, "num_beams", 1) or 1) > 1:
        raise SkipsearchError(f"beam search (num_beams={generation_config.num_beams}) is not supported: "
                              "self_speculative decodes greedily (do_sample=False) or samples (do_sample=True)")
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        batch = input_ids.shape[0] if input_ids.dim() == 2 else "?"
        raise SkipsearchError(f"batch size {batch} is not supported: self_speculative decodes one sequence at a "
                              "time (num_return_sequences 1); call generate once per prompt")
    if input_ids.shape[1] == 0:
        raise SkipsearchError("the prompt is empty: self_speculative needs input_ids (inputs_embeds are not supported)")
    if getattr(generation_config, "guidance_scale", None) not in (None, 1, 1.0):
        raise SkipsearchError("guidance_scale (classifier-free guidance) is not supported: its processor runs the "
                              "model once per step and cannot score drafted positions")
    if generation_config.return_dict_in_generate and (getattr(generation_config, "output_attentions", False)
                                                      or getattr(generation_config, "output_hidden_states", False)):
        raise SkipsearchError("output_attentions and output_hidden_states are not supported by self_speculative "
                              "(its verify passes score several tokens at once); output_scores and output_logits are")
    if synced_gpus:
        raise SkipsearchError("synced_gpus (FSDP / DeepSpeed ZeRO-3 across GPUs) is not supported by self_speculative")
    mask = model_kwargs.get("attention_mask")
    if mask is not None and not bool((mask == 1).all()):
        raise SkipsearchError("padding is not supported: the attention mask must be all ones (one unpadded sequence)")
    cache = model_kwargs.get("cache", model_kwargs.get("past_key_values"))
    if cache is not None and hasattr(cache, "get_seq_length") and cache.get_seq_length() > 0:
        raise SkipsearchError("a cache that already holds tokens is not supported: self_speculative prefills the "
                              "whole prompt into a cache of its own")
    extra = sorted(k for k, v in model_kwargs.items() if k not in _PREPARED_KWARGS and v is not None)
    if extra:
        raise SkipsearchError(f"model inputs {', '.join(extra)} are not supported by self_speculative "
                              "(it takes input_ids and an all-ones attention mask)")


def _stop_ids(generation_config) -> set[int]:
    eos = generation_config.eos_token_id
    if eos is None:
        return set()
    if isinstance(eos, torch.Tensor):
        return {int(e) for e in eos.reshape(-1).tolist()}
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


# ---------------------------------------------------------------------------------------------
# the sequence, its processed scores and the tokens committed to it


class _Sequence:
    """The prompt and the tokens committed so far (and drafts placed after them) on the device:
    what the logits processors and stopping criteria read."""

    def __init__(self, input_ids: torch.Tensor, device: torch.device, capacity: int):
        self.length = input_ids.shape[1]
        self.ids = torch.zeros((1, max(capacity, self.length + 1)), dtype=torch.long, device=device)
        self.ids[:, : self.length] = input_ids.to(device)

    def place(self, tokens: list[int], start: int) -> None:
        """Write `tokens` at positions start..; positions before `length` already hold them."""
        end = start + len(tokens)
        if end > self.ids.shape[1]:
            grown = torch.zeros((1, 2 * end), dtype=torch.long, device=self.ids.device)
            grown[:, : self.ids.shape[1]] = self.ids
            self.ids = grown
        if end > self.length:
            skip = max(self.length - start, 0)
            self.ids[0, start + skip: end] = torch.tensor(tokens[skip:], dtype=torch.long)

    def prefix(self, length: int) -> torch.Tensor:
        return self.ids[:, :length]


class _Scorer:
    """Generate's logits processors applied to raw logits, row by row: row i is scored after the
    first `lengths[i]` tokens of the sequence. Returns (raw float32 logits, processed scores,
    usable scores): processed are what `generate` reports as `scores`; usable replace the -inf of
    masked tokens (top-k, bad words, ...) by the lowest float so the decoder's finiteness checks
    only catch the model's own non-finite logits, and its softmax gives a masked token 0."""

    def __init__(self, processors, sequence: _Sequence):
        self.processors, self.sequence = processors, sequence

    def __call__(self, raw: torch.Tensor, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raw = raw.float()
        if not self.processors:
            return raw, raw, raw
        processed = torch.cat([self.processors(self.sequence.prefix(length), raw[i: i + 1].clone())
                               for i, length in enumerate(lengths)])
        lowest = torch.finfo(processed.dtype).min
        usable = torch.where(torch.isfinite(raw), processed.masked_fill(processed == float("-inf"), lowest), raw)
        return raw, processed, usable


class _ScoredForward:
    """`decoding.draft_tokens`'s forward step, returning usable processed scores instead of raw logits,
    so a layer-skip draft is proposed (and, when sampling, drawn) from the distribution generate
    would use at that position."""

    def __init__(self, step: ForwardStep, sequence: _Sequence, scorer: _Scorer):
        self.step, self.sequence, self.scorer = step, sequence, scorer

    def __call__(self, token_ids: list[int], start: int, logits_to_keep: int = 0) -> torch.Tensor:
        raw = self.step(token_ids, start, logits_to_keep=logits_to_keep)[-1:]
        end = start + len(token_ids)
        self.sequence.place(token_ids, start)
        return self.scorer(raw, [end])[2]


class _Output:
    """Commits tokens one by one as generate does: records scores and logits, asks the stopping
    criteria after each token, streams what was committed."""

    def __init__(self, sequence: _Sequence, stopping_criteria, streamer, index: NgramIndex | None,
                 keep_scores: bool, keep_logits: bool):
        self.sequence, self.stopping_criteria, self.streamer, self.index = sequence, stopping_criteria, streamer, index
        self.scores: tuple | None = () if keep_scores else None
        self.logits: tuple | None = () if keep_logits else None
        self.new_tokens = 0
        self.last = -1  # the last token committed: pending, the next pass's input

    def commit(self, tokens: list[int], scores: torch.Tensor, logits: torch.Tensor) -> bool:
        """Append `tokens` (row i of scores/logits produced token i) up to the first one after which
        a stopping criterion says stop; True when generation is over."""
        sequence = self.sequence
        start = sequence.length
        sequence.place(tokens, start)
        done = False
        for i in range(len(tokens)):
            if self.scores is not None:
                self.scores += (scores[i: i + 1].clone(),)
            if self.logits is not None:
                self.logits += (logits[i: i + 1].clone(),)
            if bool(self.stopping_criteria(sequence.prefix(start + i + 1), self.scores).any()):
                tokens, done = tokens[: i + 1], True
                break
        sequence.length = start + len(tokens)
        self.new_tokens += len(tokens)
        self.last = tokens[-1]
        if self.index is not None:
            self.index.extend(tokens)
        if self.streamer is not None:
            self.streamer.put(torch.tensor(tokens, dtype=torch.long))
        return done


# ---------------------------------------------------------------------------------------------
# the decoding method


def self_speculative(
    model,
    input_ids: torch.LongTensor,
    logits_processor,
    stopping_criteria,
    generation_config,
    synced_gpus: bool = False,
    streamer=None,
    *,
    skip_profile: str | os.PathLike | Profile | None = None,
    max_draft_tokens: int | None = None,
    confidence_threshold: float | None = None,
    fallback: bool = True,
    plain: bool = False,
    policy_memory: PolicyMemory | None = None,
    skip_stats: DecodeStats | None = None,
    policy_costs: str | RelativeCosts = "here",
    **model_kwargs,
):
    """A `generate(custom_generate=...)` decoding method: self-speculative decoding.

    `skip_profile`: a profile path or a loaded `Profile` (checked once per model against its
    fingerprint); without one the runtime drafts from the context's n-grams under its default
    priors. `plain`: draft nothing. `max_draft_tokens`, `confidence_threshold`: override the
    profile's. `fallback`: suspend drafting for a while whenever it proves slower than plain steps
    by the clock (`drafting.ThroughputGuard`). `policy_memory`: the evidence carried across calls
    (default: one per model and profile, kept by this module). `skip_stats`: a fresh `DecodeStats`
    that this call fills with its counts and times. `policy_costs`: what the policy weighs its
    options by: "here" (this device's costs, timed once and cached: `device_costs`), "profile" (the
    costs the search stored) or given `RelativeCosts`. The rest is what `generate` prepares and passes."""
    streamer = _streamer_from_generate(streamer)
    try:
        return _self_speculative(model, input_ids, logits_processor, stopping_criteria, generation_config,
                                 synced_gpus, streamer, skip_profile, max_draft_tokens, confidence_threshold,
                                 fallback, plain, policy_memory, skip_stats, policy_costs, model_kwargs)
    finally:
        if streamer is not None:
            streamer.end()


class _Generating:
    """`generate`'s side of a round (`rounds.RoundBackend`): the decoder's steps with generate's
    processors applied at every scored position and its stopping criteria after every token."""

    def __init__(self, model, skip_set, settings: DecodeSettings, sequence: _Sequence, scorer: _Scorer,
                 output: _Output, max_length: int | None, stop_ids: set[int]):
        self.model, self.skip_set, self.settings = model, skip_set, settings
        self.sequence, self.scorer, self.output, self.max_length = sequence, scorer, output, max_length
        self.stop_ids = stop_ids
        self.device = forward.input_device(model)
        self.clock = Timeline(forward.model_devices(model))
        self.cache = forward.new_cache()
        self.step = ForwardStep(model, self.cache, self.device)
        self.draft_step = _ScoredForward(self.step, sequence, scorer) if scorer.processors else self.step
        self.done = False
        self.usable: torch.Tensor | None = None  # the last usable scores: point masses are made like them

    @property
    def new_tokens(self) -> int:
        return self.output.new_tokens

    @property
    def length(self) -> int:
        return self.sequence.length - 1  # positions with full-model KV: all but the pending token

    def prefill(self, prompt: list[int]) -> None:
        raw, processed, usable = self.scorer(self.step(prompt, 0, logits_to_keep=1)[-1:], [len(prompt)])
        self.usable = usable
        self.done = self.output.commit([choose_token(usable[0], self.settings, None)], processed, raw)

    def budget(self) -> int:
        longest = self.settings.longest_draft
        return longest if self.max_length is None else min(longest, self.max_length - self.sequence.length - 1)

    def proposal(self):
        index = self.output.index
        return index.propose() if index is not None else ([], 0)

    def plain(self) -> None:
        raw, processed, usable = self.scorer(self.step([self.output.last], self.length)[-1:], [self.sequence.length])
        self.usable = usable
        self.done = self.output.commit([choose_token(usable[0], self.settings, None)], processed, raw)

    def point_masses(self, tokens):
        return [] if self.settings.greedy else [point_mass(token, self.usable) for token in tokens]

    def draft(self, after, budget: int):
        length = self.length
        tokens, probs, steps = draft_tokens(self.draft_step, self.skip_set, self.model, [self.output.last, *after],
                                            length, budget, self.settings, None, self.stop_ids)
        crop_cache(self.cache, length)
        return tokens, probs, steps

    def verify(self, drafts, draft_probs) -> int:
        length, drafts = self.length, list(drafts)
        self.sequence.place(drafts, self.sequence.length)
        raw, processed, usable = self.scorer(self.step([self.output.last] + drafts, length),
                                             [self.sequence.length + i for i in range(len(drafts) + 1)])
        accepted, next_token = verify_drafts(usable, drafts, list(draft_probs), self.settings, None)
        crop_cache(self.cache, length + 1 + accepted)
        self.usable = usable
        self.done = self.output.commit(drafts[:accepted] + [next_token], processed, raw)
        return accepted


def _self_speculative(model, input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus,
                      streamer, skip_profile, max_draft_tokens, confidence_threshold, fallback, plain, policy_memory,
                      skip_stats, policy_costs, model_kwargs):
    _check_call(model, input_ids, generation_config, synced_gpus, model_kwargs)
    if stopping_criteria is None:
        stopping_criteria = StoppingCriteriaList()
    profile = None if skip_profile is None else _resolve_profile(skip_profile)
    if profile is not None:
        check_once(model, profile)
    if isinstance(policy_costs, RelativeCosts):
        given_costs, policy_costs = policy_costs, "here"
    else:
        given_costs = None
    settings = decode_settings(profile, bool(generation_config.do_sample), max_draft_tokens, confidence_threshold,
                               fallback, plain, policy_costs)
    if given_costs is not None and settings.costs is not None:
        settings = dataclasses.replace(settings, costs=given_costs)
    skip_set = profile.skip if profile is not None and not plain else SkipSet()
    max_length = generation_config.max_length or stopping_criteria.max_length
    prompt = input_ids[0].tolist()
    settings = resolve_costs(model, skip_set, settings, len(prompt), max(0, (max_length or len(prompt)) - len(prompt)))
    keep = bool(generation_config.return_dict_in_generate)

    sequence = _Sequence(input_ids, forward.input_device(model),
                         (max_length or len(prompt) + 64) + settings.longest_draft + 1)
    scorer = _Scorer(logits_processor, sequence)
    index = NgramIndex(settings.ngram, prompt) if settings.ngram is not None else None
    output = _Output(sequence, stopping_criteria, streamer, index, keep and bool(generation_config.output_scores),
                     keep and bool(getattr(generation_config, "output_logits", False)))
    memory = policy_memory
    if memory is None and (len(skip_set) or settings.ngram is not None):
        memory = _state(model).memories.setdefault((skip_set, settings), PolicyMemory())
    policy = new_policy(settings, skip_set, memory)
    backend = _Generating(model, skip_set, settings, sequence, scorer, output, max_length, _stop_ids(generation_config))

    stats = skip_stats if skip_stats is not None else DecodeStats()
    with torch.inference_mode():
        clock = backend.clock
        start = clock.mark()
        backend.prefill(prompt)
        prefilled = clock.mark()
        run_rounds(backend, policy, new_guard(settings), stats, drafts=len(skip_set) > 0 or settings.ngram is not None)
        end = clock.mark()
        stats.prefill_time_s, stats.total_time_s = clock.seconds(start, prefilled), clock.seconds(start, end)
    stats.new_tokens = output.new_tokens
    policy.remember()

    sequences = sequence.prefix(sequence.length).clone().to(input_ids.device)
    if not keep:
        return sequences
    crop_cache(backend.cache, sequence.length - 1)  # as generate leaves it: every token but the last
    return GenerateDecoderOnlyOutput(sequences=sequences, scores=output.scores, logits=output.logits,
                                     **{_OUTPUT_CACHE_FIELD: backend.cache})


# ---------------------------------------------------------------------------------------------
# the exported folder's entry point


@functools.lru_cache(maxsize=16)
def _embedded(text: str) -> Profile:
    source = "the profile embedded in custom_generate/generate.py"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SkipsearchError(f"{source}: not valid YAML: {' '.join(str(exc).split())}") from None
    return parse_profile(data, source)


def generate_from_export(model, profile_yaml: str, *args, skip_profile=None, **kwargs):
    """What an exported folder's `custom_generate/generate.py` calls: transformers gives a folder's
    or Hub repository's `generate` the arguments of `generate` itself (with `model` for `self`);
    this runs `generate` with `self_speculative` and the folder's embedded profile (`profile_yaml`,
    the YAML text), or the `skip_profile` the caller passed instead."""
    profile = skip_profile if skip_profile is not None else _embedded(profile_yaml)
    kwargs.pop("custom_generate", None)
    return GenerationMixin.generate(model, *args, custom_generate=self_speculative, skip_profile=profile, **kwargs)
