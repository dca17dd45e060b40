"""Sublayer skipping on a live decoder-only model.

A `SkipSet` names the decoder layers whose attention block and/or MLP block are left out
while drafting. `skipping(model, skip_set)` swaps those layers' `forward` for one that
leaves the skipped blocks out, and restores the originals on exit, also after an
exception. No weights are copied: the draft model *is* the full model with some residual
branches not taken. A skipped attention block adds nothing to the residual stream and
writes no key/value entries for its layer; a skipped MLP block adds nothing.

This module knows nothing about decoding, caches or search.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import partial
from typing import Iterator, Sequence

import torch

from .errors import SkipsearchError

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")
SUBLAYER_KINDS = ("attention", "mlp")


@dataclass(frozen=True)
class SkipSet:
    """0-based decoder-layer indices whose attention / MLP blocks are skipped while drafting."""

    attention: tuple[int, ...] = ()
    mlp: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for kind in SUBLAYER_KINDS:
            indices = getattr(self, kind)
            if any(isinstance(i, bool) or not isinstance(i, int) for i in indices):
                raise SkipsearchError(f"skip.{kind}: layer indices must be integers, got {list(indices)}")
            if any(i < 0 for i in indices):
                raise SkipsearchError(f"skip.{kind}: layer indices must be >= 0, got {list(indices)}")
            if len(set(indices)) != len(indices):
                raise SkipsearchError(f"skip.{kind}: duplicate layer indices in {list(indices)}")
            object.__setattr__(self, kind, tuple(sorted(indices)))

    @classmethod
    def from_sublayers(cls, sublayers: Sequence[tuple[str, int]]) -> "SkipSet":
        """Build from ("attention" | "mlp", layer) pairs, the unit the search works in."""
        return cls(
            attention=tuple(i for kind, i in sublayers if kind == "attention"),
            mlp=tuple(i for kind, i in sublayers if kind == "mlp"),
        )

    @property
    def sublayers(self) -> list[tuple[str, int]]:
        return [("attention", i) for i in self.attention] + [("mlp", i) for i in self.mlp]

    def __len__(self) -> int:
        return len(self.attention) + len(self.mlp)

    @property
    def first_layer(self) -> int | None:
        """The lowest layer with a skipped block: hidden states before it equal the full model's."""
        layers = self.attention + self.mlp
        return min(layers) if layers else None

    def check_against(self, num_layers: int) -> None:
        for kind in SUBLAYER_KINDS:
            bad = [i for i in getattr(self, kind) if i >= num_layers]
            if bad:
                raise SkipsearchError(
                    f"skip.{kind}: layer indices {bad} are out of range for a model with "
                    f"{num_layers} decoder layers (valid: 0..{num_layers - 1})"
                )

    def describe(self) -> str:
        def fmt(xs: tuple[int, ...]) -> str:
            return ",".join(map(str, xs)) or "-"

        return f"attention[{fmt(self.attention)}] mlp[{fmt(self.mlp)}]"


def eligible_sublayers(num_layers: int, keep_first: int = 1, keep_last: int = 1) -> list[tuple[str, int]]:
    """Sublayers a search may skip; by default every layer but the first and the last (as in SWIFT)."""
    if keep_first < 0 or keep_last < 0 or keep_first + keep_last >= num_layers:
        raise SkipsearchError(
            f"keep_first={keep_first} and keep_last={keep_last} leave no eligible layer in a "
            f"{num_layers}-layer model; use smaller values"
        )
    layers = range(keep_first, num_layers - keep_last)
    return [(kind, i) for kind in SUBLAYER_KINDS for i in layers]


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder layers of a supported causal LM, or a one-line error naming the supported families."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise SkipsearchError(
            f"unsupported architecture {model_type!r}: skipsearch supports {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return model.model.layers


def _forward_without(layer, hidden_states, *, skip_attention: bool, skip_mlp: bool, **kwargs):
    # Mirrors the pre-norm decoder layer shared by the supported families, with branches left out.
    if not skip_attention:
        attended, _ = layer.self_attn(hidden_states=layer.input_layernorm(hidden_states), **kwargs)
        hidden_states = hidden_states + attended
    if not skip_mlp:
        hidden_states = hidden_states + layer.mlp(layer.post_attention_layernorm(hidden_states))
    return hidden_states


@contextlib.contextmanager
def skipping(model: torch.nn.Module, skip_set: SkipSet) -> Iterator[None]:
    """Run the model with `skip_set`'s blocks left out inside the block; restored on exit."""
    layers = decoder_layers(model)
    skip_set.check_against(len(layers))
    patched = []
    try:
        for index in sorted(set(skip_set.attention) | set(skip_set.mlp)):
            layer = layers[index]
            layer.forward = partial(
                _forward_without,
                layer,
                skip_attention=index in skip_set.attention,
                skip_mlp=index in skip_set.mlp,
            )
            patched.append(layer)
        yield
    finally:
        for layer in patched:
            del layer.forward
