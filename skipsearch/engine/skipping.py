"""Sublayer skipping on a live decoder-only model.

A `SkipSet` names the decoder layers whose attention block and/or MLP block are left out
while drafting. `skipping(model, skip_set)` switches those blocks off and back on at exit,
also after an exception, for the calling thread (or asyncio task) only: the model can be
shared, and another thread's forward passes through the same modules see every block. A block
is switched through a small bypass that wraps whatever `forward` its modules had, so hooks
that accelerate (device maps, offloading) or another library put there keep working and stay
in place. No weights are copied: the draft model
*is* the full model with some residual branches not taken. A skipped attention block adds
nothing to the residual stream and writes no key/value entries for its layer; a skipped MLP
block adds nothing.

This module knows nothing about decoding, caches or search.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import torch

from skipsearch.errors import SkipsearchError

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
        """The one way a skip set is written for people: `attention[5,6] mlp[-]`."""

        def fmt(xs: tuple[int, ...]) -> str:
            return ",".join(map(str, xs)) or "-"

        return f"attention[{fmt(self.attention)}] mlp[{fmt(self.mlp)}]"

    # The forms a skip set takes outside this object. A SkipSet is itself the hashable key
    # (frozen, indices sorted), so sets read back from any form compare and deduplicate as equal.

    def to_dict(self) -> dict[str, list[int]]:
        """`{"attention": [...], "mlp": [...]}`: the profile's `skip` mapping, and JSON outputs."""
        return {"attention": list(self.attention), "mlp": list(self.mlp)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SkipSet":
        return cls(attention=tuple(data.get("attention") or ()), mlp=tuple(data.get("mlp") or ()))

    def to_attrs(self) -> dict[str, list[int]]:
        """Optuna trial user attributes (`skip_attention`, `skip_mlp`); also the rescored records."""
        return {"skip_attention": list(self.attention), "skip_mlp": list(self.mlp)}

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> "SkipSet":
        """Read back `to_attrs`; a trial without them (a failed one) skips nothing."""
        return cls(attention=tuple(int(i) for i in attrs.get("skip_attention") or ()),
                   mlp=tuple(int(i) for i in attrs.get("skip_mlp") or ()))

    def to_params(self, eligible: Sequence[tuple[str, int]]) -> dict[str, float]:
        """Optuna parameters, one per eligible sublayer in its order: 1.0 skipped, 0.0 kept."""
        skipped = set(self.sublayers)
        return {param_name(s): 1.0 if s in skipped else 0.0 for s in eligible}

    @classmethod
    def from_params(cls, params: Mapping[str, float], eligible: Sequence[tuple[str, int]], k: int | None) -> "SkipSet":
        """With a fixed count k the k highest values are skipped (ties go to the earlier sublayer of
        `eligible`); with k None every value above 0.5 is."""
        values = [(params[param_name(s)], -i, s) for i, s in enumerate(eligible)]
        if k is None:
            chosen = [s for value, _, s in values if value > 0.5]
        else:
            chosen = [s for _, _, s in sorted(values, reverse=True)[:k]]
        return cls.from_sublayers(chosen)


def param_name(sublayer: tuple[str, int]) -> str:
    """The Optuna parameter of one sublayer: "attention.5", "mlp.7"."""
    kind, layer = sublayer
    return f"{kind}.{layer}"


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


# The bypasses switched off in this thread / task. A context variable rather than a flag on the
# shared modules: serving code shares one model between request threads, and a flag would make
# another thread's plain `generate` run with this thread's blocks skipped.
_SKIPPED: contextvars.ContextVar[frozenset["_Bypass"]] = contextvars.ContextVar(
    "skipsearch_skipped", default=frozenset()
)
_INSTALL_LOCK = threading.Lock()


class _Bypass:
    """Stands in one block's `forward` slot and calls whatever was there before, unless the
    calling context skips it.

    What was there may be the module's own forward or a hook another library installed by
    assigning `forward` on the instance (accelerate's device map and offloading do): it is
    kept and called, never replaced or deleted. Skipped, a norm passes its input through and an
    attention or MLP block adds a zero to the residual stream: the decoder layer's own forward
    still runs, with any hook on it, so inputs and weights are where they should be."""

    __slots__ = ("inner", "role")

    def __init__(self, inner, role: str):
        self.inner, self.role = inner, role

    def __call__(self, *args, **kwargs):
        if self not in _SKIPPED.get():
            return self.inner(*args, **kwargs)
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        if self.role == "norm":
            return hidden
        zero = hidden.new_zeros(())  # broadcasts onto the residual; x + 0 is exactly x
        return (zero, None) if self.role == "attention" else zero


# per block kind: (attribute, role) of the modules a skipped block leaves out; in every supported
# family a block's norm feeds that block only
_BLOCK_MODULES = {
    "attention": (("input_layernorm", "norm"), ("self_attn", "attention")),
    "mlp": (("post_attention_layernorm", "norm"), ("mlp", "mlp")),
}


def _bypass(module: torch.nn.Module, role: str) -> _Bypass:
    """The module's bypass, installed on first use and kept: later skips only name it in `_SKIPPED`.

    Installed again if something replaced it since (a hook added or removed afterwards); under a
    lock, so that two threads skipping at once do not wrap each other's bypass."""
    with _INSTALL_LOCK:
        current = module.__dict__.get("forward")
        if isinstance(current, _Bypass):
            return current
        bypass = _Bypass(current if current is not None else module.forward, role)
        module.forward = bypass
        return bypass


@contextlib.contextmanager
def skipping(model: torch.nn.Module, skip_set: SkipSet) -> Iterator[None]:
    """Run the model with `skip_set`'s blocks left out inside the block, in this thread / task
    only; restored on exit. Nested blocks skip the union of their sets."""
    layers = decoder_layers(model)
    skip_set.check_against(len(layers))
    bypasses = frozenset(
        _bypass(getattr(layers[index], attribute), role)
        for kind in SUBLAYER_KINDS
        for index in getattr(skip_set, kind)
        for attribute, role in _BLOCK_MODULES[kind]
    )
    token = _SKIPPED.set(_SKIPPED.get() | bypasses)
    try:
        yield
    finally:
        _SKIPPED.reset(token)
