"""Fast proxy scores of a skip set against reference continuations.

For each search prompt the full model's KV cache of the prompt and its per-layer hidden
states over the reference continuation are computed once. A candidate then runs only its
own layers from its first skipped sublayer upwards, over the continuation only, attending
to the prompt's full-model KV, exactly what drafting sees in skipsearch's runtime (the
prompt is prefilled by the full model; drafting only runs on new tokens, and verified
tokens enter the cache from the full model): the draft cache is `shared`.

An engine's draft model (`skipsearch export-draft`) keeps a cache of its own: it prefills
the prompt itself and its KV over verified tokens comes from its own, skipped, hidden
states. With `draft_cache="own"` the scorer keeps the full model's hidden states over prompt
and continuation together, and a candidate runs from its first skipped sublayer over all of
them without any cache: one pass of the skipped model over prompt and reference, which is
what the engine's draft computes for each verified position. Its scores are lower; held
memory grows with prompt + continuation tokens instead of continuation tokens.

Scores:
- matchness: the share of positions where the skipped model's argmax equals the full
  model's next token (SWIFT's objective; for greedy decoding it is the per-token
  acceptance chance);
- expected acceptance: the mean of sum_v min(p_v, q_v), the chance that speculative
  sampling at temperature 1 accepts a drafted token.

Nothing of vocabulary size is kept between scores: the full model's distribution p is
recomputed from its final hidden states (kept anyway) one prompt at a time, so held memory
grows with tokens x hidden size, not tokens x vocabulary (64 prompts x 512 tokens x a 128k
vocabulary would be ~17 GB of float32), at the price of one LM head pass per prompt and score.

This module knows nothing about tasks, storage or search.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import DynamicCache
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from skipsearch.config.studies import DRAFT_CACHES
from skipsearch.engine import forward
from skipsearch.engine.forward import crop_cache
from skipsearch.engine.replay import ReplayPrompt
from skipsearch.engine.skipping import SkipSet, decoder_layers, skipping
from skipsearch.engine.timing import Stopwatch, device_time, median
from skipsearch.errors import SkipsearchError
from skipsearch.search.references import Reference


@dataclass(frozen=True)
class ProxyScore:
    matchness: float
    expected_acceptance: float
    # per prompt, per continuation position: (the draft's top-1 probability, whether its
    # argmax is the full model's next token)
    trace: tuple[tuple[tuple[float, bool], ...], ...] = field(default=(), compare=False, repr=False)
    # the prompts with their continuations and traces, as `costs.replay_drafting` replays them
    prompts: tuple[ReplayPrompt, ...] = field(default=(), compare=False, repr=False)


def check_draft_cache(draft_cache: str) -> None:
    if draft_cache not in DRAFT_CACHES:
        raise SkipsearchError(f"unknown draft cache {draft_cache!r}; use shared (skipsearch's own runtime and "
                              "custom_generate) or own (an engine's exported draft model)")


@dataclass
class _PromptState:
    cache: DynamicCache | None  # the full model's KV of the prompt only; None for an own draft cache
    prompt_length: int
    # hidden[i]: input of layer i over the scored positions (1, T, hidden); with an own draft
    # cache over the prompt and the scored positions (1, P + T, hidden)
    hidden: list[torch.Tensor]
    final: torch.Tensor  # the last layer's output after the final norm, (1, T, hidden); p comes from it
    masks: list  # per layer attention mask for the rows of `hidden`, as the model itself builds them
    position_ids: torch.Tensor  # (1, T), or (1, P + T)
    position_embeddings: tuple[torch.Tensor, torch.Tensor]
    targets: torch.Tensor  # (T,) the next token after each scored position
    scored_from: int  # the first row of `hidden` that is scored: 0, or P with an own draft cache

    def release(self) -> None:
        """Drop what a pass appended to the shared prompt cache."""
        if self.cache is not None:
            crop_cache(self.cache, self.prompt_length)


def mask_kinds(config, num_layers: int) -> list[str]:
    """Per decoder layer, the mask the model's own forward gives it: "full_attention" or "sliding_attention"."""
    if config.model_type == "mistral":
        # MistralModel has no layer_types: one mask for every layer, windowed whenever a window is set
        kind = "full_attention" if config.sliding_window is None else "sliding_attention"
        return [kind] * num_layers
    # Qwen2 and Qwen3 derive layer_types from use_sliding_window and max_window_layers; Llama has none
    return list(getattr(config, "layer_types", None) or ["full_attention"] * num_layers)


class ProxyScorer:
    """Scores skip sets on a fixed set of reference continuations, reusing the full model's work."""

    def __init__(self, model, references: list[Reference], draft_cache: str = "shared"):
        check_draft_cache(draft_cache)
        self.model = model
        self.draft_cache = draft_cache
        self.layers = decoder_layers(model)
        self.device = forward.input_device(model)
        self.devices = forward.model_devices(model)  # what timing waits for
        self._layer_cache_keyword = forward.cache_keyword(self.layers[0])
        usable = [r for r in references if len(r.continuation) >= 2]
        if not usable:
            raise SkipsearchError(
                "every reference continuation is shorter than 2 tokens; use prompts with longer answers "
                "or raise task.reference_tokens"
            )
        self.references = tuple(usable)
        self.positions = sum(len(r.continuation) - 1 for r in usable)
        self.evaluations = 0
        self.seconds = 0.0
        self.block_forwards = 0  # attention or MLP blocks `run_layer` ran over every prompt
        self._memo: dict[SkipSet, ProxyScore] = {}
        with torch.inference_mode():
            self._states = [self._prepare(r) for r in usable]

    def _masks(self, inputs_embeds, cache, position_ids) -> list:
        kinds = mask_kinds(self.model.config, len(self.layers))
        builders = {"full_attention": create_causal_mask, "sliding_attention": create_sliding_window_causal_mask}
        by_kind = {
            kind: builders[kind](config=self.model.config, inputs_embeds=inputs_embeds, attention_mask=None,
                                 position_ids=position_ids, **{forward.cache_keyword(builders[kind]): cache})
            for kind in set(kinds)
        }
        return [by_kind[kind] for kind in kinds]

    def _prepare(self, reference: Reference) -> _PromptState:
        if self.draft_cache == "own":
            return self._prepare_own(reference)
        model, device = self.model, self.device
        prompt = torch.tensor([reference.prompt_ids], device=device)
        cache = forward.new_cache()
        forward.run(model, cache, prompt, 0, logits_to_keep=1)
        # inputs are the continuation but its last token; each predicts the token after it
        continuation = torch.tensor([reference.continuation], device=device)
        inputs, targets = continuation[:, :-1], continuation[0, 1:]
        start = prompt.shape[1]
        position_ids = torch.arange(start, start + inputs.shape[1], device=device).unsqueeze(0)
        embeds = model.model.embed_tokens(inputs)
        masks = self._masks(embeds, cache, position_ids)
        # one logit only: scoring recomputes p from the final hidden states when it needs it
        out = forward.run(model, cache, inputs, start, output_hidden_states=True, logits_to_keep=1)
        crop_cache(cache, start)
        return _PromptState(
            cache=cache,
            prompt_length=start,
            hidden=list(out.hidden_states[:-1]),
            final=out.hidden_states[-1],
            masks=masks,
            position_ids=position_ids,
            position_embeddings=model.model.rotary_emb(embeds, position_ids=position_ids),
            targets=targets,
            scored_from=0,
        )

    def _prepare_own(self, reference: Reference) -> _PromptState:
        """Prompt and continuation (but its last token) in one full pass without a cache; the
        continuation's rows are scored."""
        model, device = self.model, self.device
        start = len(reference.prompt_ids)
        inputs = torch.tensor([list(reference.prompt_ids) + list(reference.continuation[:-1])], device=device)
        position_ids = torch.arange(inputs.shape[1], device=device).unsqueeze(0)
        embeds = model.model.embed_tokens(inputs)
        out = model(input_ids=inputs, use_cache=False, output_hidden_states=True, logits_to_keep=1)
        return _PromptState(
            cache=None,
            prompt_length=start,
            hidden=list(out.hidden_states[:-1]),
            final=out.hidden_states[-1][:, start:],
            masks=self._masks(embeds, None, position_ids),
            position_ids=position_ids,
            position_embeddings=model.model.rotary_emb(embeds, position_ids=position_ids),
            targets=torch.tensor(reference.continuation[1:], device=device),
            scored_from=start,
        )

    def _draft_logits(self, state: _PromptState, skip_set: SkipSet) -> torch.Tensor:
        """The skipped model's logits over the continuation, starting at its first skipped layer."""
        first = skip_set.first_layer
        hidden = state.hidden[first]
        try:
            with skipping(self.model, skip_set):
                for index in range(first, len(self.layers)):
                    hidden = self.layers[index](
                        hidden,
                        attention_mask=state.masks[index],
                        position_ids=state.position_ids,
                        use_cache=True,
                        position_embeddings=state.position_embeddings,
                        **{self._layer_cache_keyword: state.cache},
                    )
        finally:
            state.release()
        return self.model.lm_head(self.model.model.norm(hidden[:, state.scored_from:]))[0]  # (T, vocab)

    # --- one layer at a time, for the dynamic programs over layers (`layer_dp`) -----------------

    def layer_inputs(self) -> list[torch.Tensor]:
        """Every prompt's input of the first layer: where a table over layers starts."""
        return [state.hidden[0] for state in self._states]

    def run_layer(self, index: int, hidden: list[torch.Tensor], skip_set: SkipSet) -> list[torch.Tensor]:
        """Layer `index` over each prompt's continuation from `hidden`, with the blocks of `skip_set`
        (sublayers of this layer only) left out, attending to the prompt's full-model KV (with an
        own draft cache: over prompt and continuation, attending to `hidden` only)."""
        outputs = []
        self.block_forwards += 2 - len(skip_set)
        with torch.inference_mode(), skipping(self.model, skip_set):
            for state, inputs in zip(self._states, hidden):
                try:
                    outputs.append(self.layers[index](
                        inputs, attention_mask=state.masks[index], position_ids=state.position_ids, use_cache=True,
                        position_embeddings=state.position_embeddings, **{self._layer_cache_keyword: state.cache}))
                finally:
                    state.release()
        return outputs

    def similarity(self, hidden: list[torch.Tensor], depth: int) -> float:
        """Mean cosine similarity, over every continuation position, of `hidden` (the output of
        layer depth - 1) to the full model's state there; at the last depth both pass the final norm."""
        last = depth == len(self.layers)
        total = 0.0
        with torch.inference_mode():
            for state, states in zip(self._states, hidden):
                states = states[:, state.scored_from:]
                ours = self.model.model.norm(states) if last else states
                full = state.final if last else state.hidden[depth][:, state.scored_from:]
                total += torch.nn.functional.cosine_similarity(ours.float(), full.float(), dim=-1).sum().item()
        return total / sum(len(state.targets) for state in self._states)

    def forget(self) -> None:
        """Drop remembered scores and counters, so that methods compared on one scorer pay alike."""
        self._memo.clear()
        self.evaluations, self.seconds, self.block_forwards = 0, 0.0, 0

    def score(self, skip_set: SkipSet) -> ProxyScore:
        if skip_set in self._memo:
            return self._memo[skip_set]
        if not len(skip_set):  # nothing skipped drafts nothing: only n-gram drafting can replay here
            return ProxyScore(1.0, 1.0, prompts=tuple(ReplayPrompt(r.prompt_ids, r.continuation)
                                                      for r in self.references))
        started = device_time(self.devices)
        matches, overlap, trace = 0, 0.0, []
        with torch.inference_mode():
            for state in self._states:
                probs = self._draft_logits(state, skip_set).float().softmax(-1)
                confidence, best = probs.max(-1)
                hits = best == state.targets
                matches += int(hits.sum())
                target_probs = self.model.lm_head(state.final)[0].float().softmax(-1)  # (T, vocab)
                overlap += torch.minimum(probs, target_probs).sum().item()
                trace.append(tuple(zip(confidence.tolist(), hits.tolist())))
        self.seconds += device_time(self.devices) - started
        self.evaluations += 1
        prompts = tuple(ReplayPrompt(r.prompt_ids, r.continuation, t) for r, t in zip(self.references, trace))
        result = ProxyScore(matches / self.positions, overlap / self.positions, tuple(trace), prompts)
        self._memo[skip_set] = result
        return result


def full_forward_seconds(model, references: list[Reference], repeats: int = 3) -> float:
    """Median time of one plain full-model forward over every prompt + continuation: the cost a
    proxy evaluation is compared with."""
    device = forward.input_device(model)
    # logits only where the proxy needs them, so the comparison does not flatter the proxy
    inputs = [(torch.tensor([r.prompt_ids + r.continuation[:-1]], device=device), len(r.continuation) - 1)
              for r in references if len(r.continuation) >= 2]
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            with Stopwatch(forward.model_devices(model)) as watch:
                for ids, scored in inputs:
                    model(input_ids=ids, logits_to_keep=scored)
            times.append(watch.seconds)
    return median(times)


def score_from_scratch(model, references: list[Reference], skip_set: SkipSet,
                       draft_cache: str = "shared") -> ProxyScore:
    """The same scores without reusing hidden states: a check on `ProxyScorer`, and its cost baseline.
    With an own draft cache the skipped model prefills the prompt itself, as an engine's draft does."""
    check_draft_cache(draft_cache)
    matches, overlap, positions = 0.0, 0.0, 0
    device = forward.input_device(model)
    with torch.inference_mode():
        for reference in references:
            if len(reference.continuation) < 2:
                continue
            cache = forward.new_cache()
            forward.run(model, cache, torch.tensor([reference.prompt_ids], device=device), 0, logits_to_keep=1)
            start = len(reference.prompt_ids)
            inputs = torch.tensor([reference.continuation[:-1]], device=device)
            targets = torch.tensor(reference.continuation[1:], device=device)
            full = forward.run(model, cache, inputs, start)
            crop_cache(cache, start)
            with skipping(model, skip_set):
                if draft_cache == "own":
                    cache = forward.new_cache()
                    forward.run(model, cache, torch.tensor([reference.prompt_ids], device=device), 0,
                                logits_to_keep=1)
                draft = forward.run(model, cache, inputs, start)
            q = draft.logits[0].float().softmax(-1)
            matches += (draft.logits[0].argmax(-1) == targets).sum().item()
            overlap += torch.minimum(q, full.logits[0].float().softmax(-1)).sum().item()
            positions += len(targets)
    return ProxyScore(matches / positions, overlap / positions)
