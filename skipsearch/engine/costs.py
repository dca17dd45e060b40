"""The cost model of self-speculative decoding, measured on the device the model runs on.

`measure_costs` times single-token forward passes of the model with every attention block,
every MLP block, or everything skipped, and verify passes of 1..n tokens; `CostModel` holds
the result in seconds; `draft_step_cost`, `verify_cost` and `relative_costs` read a skip set's
costs off it. Predictions from these costs live in `prediction`, the replay of drafting over
reference continuations in `replay`.

This module knows nothing about tasks, prompts, profiles, decoding or search; it does no file
I/O (`to_dict` / `from_dict` let callers save a CostModel as JSON or YAML).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from skipsearch.engine import forward
from skipsearch.engine.drafting import RelativeCosts
from skipsearch.engine.skipping import SkipSet, decoder_layers, skipping
from skipsearch.engine.timing import Stopwatch, median
from skipsearch.errors import SkipsearchError

log = logging.getLogger(__name__)


@dataclass
class CostModel:
    """Wall-clock costs in seconds of the parts of a forward pass, at one context length.

    The decoder layers of the supported models all have the same shapes, so layers on the
    same device cost the same: one cost per block kind is measured for each group of layers
    that share a device (one group unless the model is spread over devices or offloaded) and
    stored for every layer of the group.
    """

    attention: list[float]  # per decoder layer: one attention block, one new token
    mlp: list[float]  # per decoder layer: one MLP block, one new token
    fixed: float  # everything else of a one-token step: embedding, final norm, LM head, overhead
    verify: list[float]  # index n-1: a full-model pass over n new tokens (verify[0] = a plain step)
    device: str  # e.g. "cpu (2 threads)" or the CUDA device name
    dtype: str  # e.g. "float32"
    context_tokens: int = 0  # tokens already in the KV cache while timing
    # per decoder layer: seconds one attention block adds per token of context, fitted as a line
    # through the attention costs timed at `context_points` (empty: timed at one length only)
    attention_slope: list[float] = field(default_factory=list)
    # what the fit saw: [{"context_tokens": n, "attention": [per layer]}], the timing context first
    context_points: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.attention) != len(self.mlp):
            raise SkipsearchError(
                f"cost model: attention and mlp need one cost per layer each, got {len(self.attention)} "
                f"and {len(self.mlp)}"
            )
        if not self.verify:
            raise SkipsearchError("cost model: verify needs at least the cost of one token, got []")
        values = [*self.attention, *self.mlp, self.fixed, *self.verify]
        if any(not math.isfinite(v) or v < 0 for v in values):
            raise SkipsearchError("cost model: costs must be finite and >= 0 seconds")
        # a pass over more tokens does all the work of one over fewer, so it never costs less; timings
        # that say otherwise (kernel choices, noise: bfloat16 on a CPU can time 2 tokens at 0.8 of 1)
        # would make every draft look free against a plain step, so they are pooled
        self.verify = nondecreasing(self.verify)

    @property
    def num_layers(self) -> int:
        return len(self.attention)

    @property
    def plain_step(self) -> float:
        """One full-model step of plain decoding (one new token)."""
        return self.verify[0]

    def at_context(self, context_tokens: int) -> "CostModel":
        """The costs with `context_tokens` in the KV cache: every attention block, and every token
        a pass verifies, costs its slope per context token more (or less) than at the timing
        context; MLP blocks and the fixed part do not depend on the context."""
        if not self.attention_slope or context_tokens == self.context_tokens:
            return self
        delta = context_tokens - self.context_tokens
        attention = [max(0.0, cost + slope * delta) for cost, slope in zip(self.attention, self.attention_slope)]
        per_token = sum(attention) - sum(self.attention)
        verify = [max(cost + n * per_token, 0.0) for n, cost in enumerate(self.verify, 1)]
        return dataclasses.replace(self, attention=attention, verify=verify, context_tokens=context_tokens)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CostModel":
        names = [f.name for f in dataclasses.fields(cls)]
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        unknown = sorted(set(data) - set(names))
        missing = [name for name in required if name not in data]
        if unknown or missing:
            raise SkipsearchError(
                f"cost model: unknown keys {unknown} / missing keys {missing}; the keys are {', '.join(names)}"
            )
        return cls(
            attention=[float(v) for v in data["attention"]],
            mlp=[float(v) for v in data["mlp"]],
            fixed=float(data["fixed"]),
            verify=[float(v) for v in data["verify"]],
            attention_slope=[float(v) for v in data.get("attention_slope") or ()],
            context_points=[dict(point) for point in data.get("context_points") or ()],
            device=str(data["device"]),
            dtype=str(data["dtype"]),
            context_tokens=int(data.get("context_tokens", 0)),
        )


def nondecreasing(values: Sequence[float]) -> list[float]:
    """The non-decreasing sequence closest to `values` in squared error (isotonic regression by
    pooling adjacent violators: each run that decreases is replaced by its mean)."""
    blocks: list[list[float]] = []  # [sum, count] of each pooled run
    for value in values:
        blocks.append([value, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    return [total / count for total, count in blocks for _ in range(int(count))]


def describe_device(device: torch.device) -> str:
    """"cpu (N threads)" or the CUDA device's name: what a cost or a speedup was measured on."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"{device.type} ({threads} thread{'' if threads == 1 else 's'})"


# ---------------------------------------------------------------------------- measuring


def layer_groups(model) -> list[tuple[int, ...]]:
    """Decoder layers grouped by where their attention and MLP blocks run, from the device map
    that accelerate dispatched the model with (`hf_device_map`); one group without one.

    A layer offloaded to the host or disk costs what moving its weights costs, so it forms a
    group of its own kind ("cpu", "disk") beside the layers on each GPU."""
    layers = decoder_layers(model)
    device_map = getattr(model, "hf_device_map", None) or {}
    if len(set(map(str, device_map.values()))) <= 1:
        return [tuple(range(len(layers)))]
    names = {id(module): name for name, module in model.named_modules()}

    def placed(module) -> str:
        name = names[id(module)]
        # the most specific entry of the map that holds the module
        holders = [key for key in device_map if key == "" or name == key or name.startswith(key + ".")]
        return str(device_map[max(holders, key=len)]) if holders else "?"

    groups: dict[tuple[str, str], list[int]] = {}
    for index, layer in enumerate(layers):
        groups.setdefault((placed(layer.self_attn), placed(layer.mlp)), []).append(index)
    return [tuple(indices) for indices in groups.values()]


def fit_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """The least-squares slope of ys against xs, never below 0 (a block is not cheaper with more
    context; a negative fit is timing noise); 0 with fewer than two distinct xs."""
    if len(set(xs)) < 2:
        return 0.0
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
    return max(0.0, slope)


def with_context_fit(costs: CostModel, points: Sequence[tuple[int, Sequence[float]]]) -> CostModel:
    """`costs` with attention slopes fitted through its own point and `points` (context length,
    per-layer attention costs timed there)."""
    every = [(costs.context_tokens, list(costs.attention)), *((n, list(a)) for n, a in points)]
    slopes = [fit_slope([n for n, _ in every], [a[i] for _, a in every]) for i in range(costs.num_layers)]
    return dataclasses.replace(costs, attention_slope=slopes,
                               context_points=[{"context_tokens": n, "attention": a} for n, a in every])


def measure_costs(
    model,
    context_tokens: int = 128,
    max_verify_tokens: int = 9,
    repeats: int = 5,
    seed: int = 0,
    contexts: Sequence[int] = (),
) -> CostModel:
    """Time the model's forward passes on its own device and return the medians as a CostModel.

    A cache is prefilled with `context_tokens` random ids; every timed pass appends at explicit
    positions after them and the cache is cropped back after each pass, so all passes see the
    same context. The configurations are timed interleaved (one of each per repeat, after one
    warm-up each) so drift in the machine's speed hits all of them alike. A block's cost is the
    plain step's time less that of a step with the block kind skipped in one group of layers
    (`layer_groups`), shared out over the group. Neither the model nor torch's global random
    state is changed.

    At each of the other `contexts` lengths the plain step and the steps without attention are
    timed again, and every layer's attention cost gets a slope per context token fitted through
    all lengths (`CostModel.at_context` uses it).
    """
    if context_tokens < 1 or max_verify_tokens < 1 or repeats < 1:
        raise SkipsearchError(
            "measure_costs needs context_tokens >= 1, max_verify_tokens >= 1 and repeats >= 1, got "
            f"{context_tokens}, {max_verify_tokens} and {repeats}"
        )
    num_layers = len(decoder_layers(model))
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions is not None and context_tokens + max_verify_tokens > max_positions:
        raise SkipsearchError(
            f"context_tokens={context_tokens} plus max_verify_tokens={max_verify_tokens} exceed the model's "
            f"{max_positions} positions; use a shorter context"
        )
    device = forward.input_device(model)
    dtype = model.get_input_embeddings().weight.dtype
    groups = layer_groups(model)
    generator = torch.Generator().manual_seed(seed)
    context = torch.randint(0, model.config.vocab_size, (1, context_tokens + max_verify_tokens), generator=generator)
    context = context.to(device)  # (1, context + verify tokens)
    everything = range(num_layers)
    # name -> (skip set, new tokens); "verify n" with n = 1 is the full model's plain step
    configurations: dict[str, tuple[SkipSet, int]] = {
        "nothing": (SkipSet(attention=tuple(everything), mlp=tuple(everything)), 1),
    }
    for number, group in enumerate(groups):
        configurations[f"no attention {number}"] = (SkipSet(attention=group), 1)
        configurations[f"no mlp {number}"] = (SkipSet(mlp=group), 1)
    configurations.update({f"verify {n}": (SkipSet(), n) for n in range(1, max_verify_tokens + 1)})

    medians = _timed_medians(model, context, context_tokens, configurations, repeats)
    attention = _per_layer(medians, groups, "no attention", num_layers)
    mlp = _per_layer(medians, groups, "no mlp", num_layers)
    if 0.0 in attention or 0.0 in mlp:
        log.warning("measure_costs: a block's cost was below the timing noise and is taken as 0; "
                    "use more repeats or a quieter machine")
    costs = CostModel(
        attention=attention,
        mlp=mlp,
        fixed=medians["nothing"],
        verify=[medians[f"verify {n}"] for n in range(1, max_verify_tokens + 1)],
        device=describe_device(device),
        dtype=str(dtype).removeprefix("torch."),
        context_tokens=context_tokens,
    )
    others = sorted({n for n in contexts if n != context_tokens})
    if max_positions is not None and others and others[-1] + 1 > max_positions:
        raise SkipsearchError(f"contexts up to {others[-1]} exceed the model's {max_positions} positions; "
                              "use shorter contexts")
    points = [(n, _attention_at(model, groups, n, repeats, generator, device)) for n in others]
    return with_context_fit(costs, points) if points else costs


def _attention_at(model, groups, context_tokens: int, repeats: int, generator, device) -> list[float]:
    """Per layer, one attention block's cost on one new token after `context_tokens` of context."""
    ids = torch.randint(0, model.config.vocab_size, (1, context_tokens + 1), generator=generator).to(device)
    configurations = {"verify 1": (SkipSet(), 1),
                      **{f"no attention {g}": (SkipSet(attention=group), 1) for g, group in enumerate(groups)}}
    medians = _timed_medians(model, ids, context_tokens, configurations, repeats)
    return _per_layer(medians, groups, "no attention", len(decoder_layers(model)))


def _timed_medians(model, ids: torch.Tensor, context_tokens: int, configurations: dict[str, tuple[SkipSet, int]],
                   repeats: int) -> dict[str, float]:
    """Each configuration's (skip set, new tokens) median time over `repeats` passes after the
    cache holds `ids[:, :context_tokens]`, interleaved, after one warm-up pass of each. Every pass
    appends `new tokens` of `ids` at explicit positions and the cache is cropped back after it,
    so all passes see the same context."""
    devices = forward.model_devices(model)
    with torch.inference_mode():
        cache = forward.new_cache()
        forward.run(model, cache, ids[:, :context_tokens], 0, logits_to_keep=1)

        def timed(skip_set: SkipSet, new_tokens: int) -> float:
            with skipping(model, skip_set), Stopwatch(devices) as watch:
                # every position's logits, as the decoder computes them while drafting and verifying
                forward.run(model, cache, ids[:, context_tokens : context_tokens + new_tokens], context_tokens)
            forward.crop_cache(cache, context_tokens)
            return watch.seconds

        for skip_set, new_tokens in configurations.values():  # warm-up
            timed(skip_set, new_tokens)
        samples: dict[str, list[float]] = {name: [] for name in configurations}
        for _ in range(repeats):
            for name, (skip_set, new_tokens) in configurations.items():
                samples[name].append(timed(skip_set, new_tokens))
    unsteady = [name for name, times in samples.items() if max(times) > 2 * min(times)]
    if unsteady:
        log.warning("measure_costs: timings varied more than 2x between repeats (%s, %d-token context); the "
                    "machine is busy or its clock changes, and the cost model is unreliable", ", ".join(unsteady),
                    context_tokens)
    return {name: median(times) for name, times in samples.items()}


def _per_layer(medians: dict[str, float], groups: list[tuple[int, ...]], without: str, num_layers: int) -> list[float]:
    """Per layer, one block's cost: the plain step less the step `without` the block kind in the
    layer's group (`"no attention"` or `"no mlp"`), shared out over the group; noise can make the
    difference negative on a small model, and a block never costs less than nothing."""
    costs = [0.0] * num_layers
    for number, group in enumerate(groups):
        for index in group:
            costs[index] = max(0.0, (medians["verify 1"] - medians[f"{without} {number}"]) / len(group))
    return costs


# ---------------------------------------------------------------------------- a skip set's costs


def draft_step_cost(costs: CostModel, skip_set: SkipSet) -> float:
    """One draft step (one token) of the model with `skip_set` left out: the plain step's share
    that the fixed part and the blocks that still run take.

    The parts are measured as differences between whole passes, so on a busy machine they need
    not add up to the plain step; taking their shares keeps a draft step consistent with the
    plain and verify costs it is weighed against (and never dearer than a plain step)."""
    skip_set.check_against(costs.num_layers)
    attention = sum(c for i, c in enumerate(costs.attention) if i not in skip_set.attention)
    mlp = sum(c for i, c in enumerate(costs.mlp) if i not in skip_set.mlp)
    whole = costs.fixed + sum(costs.attention) + sum(costs.mlp)
    if whole <= 0:
        return costs.plain_step
    return costs.plain_step * (costs.fixed + attention + mlp) / whole


def verify_cost(costs: CostModel, tokens: float) -> float:
    """A full-model pass over `tokens` new tokens, linear between the measured whole counts."""
    measured = len(costs.verify)
    if not 1 <= tokens <= measured:
        raise SkipsearchError(
            f"verify costs were measured for 1..{measured} tokens, not {tokens:g}; "
            f"measure with max_verify_tokens >= {math.ceil(tokens)}"
        )
    low = int(math.floor(tokens))
    if low == measured:
        return costs.verify[-1]
    share = tokens - low
    return (1 - share) * costs.verify[low - 1] + share * costs.verify[low]


def relative_costs(costs: CostModel, skip_set: SkipSet) -> RelativeCosts:
    """The costs a drafting policy weighs, as multiples of one plain step."""
    plain = costs.plain_step
    # a part timed as free on a busy machine (or extrapolated below zero along a noisy context
    # slope) is noise: nothing runs for less than a hundredth of a plain step here
    floor = 0.01
    return RelativeCosts(verify=tuple(max(v / plain, floor) for v in costs.verify),
                         draft_step=max(draft_step_cost(costs, skip_set) / plain, floor))
