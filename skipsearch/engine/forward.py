"""The one place that calls a causal LM's forward pass on a KV cache.

transformers 5.24 renamed the forward argument `past_key_values` to `cache` (the old name
warns, and 5.40 removes it); the masking helpers and the decoder layers follow the same
rename. `cache_keyword` reads the name from the signature of whatever is called, so every
transformers 5.x works without version checks. `run` passes positions only when the cache
cannot imply them (a skipped attention layer 0 leaves the cache's reported length behind),
and hands flash-attention the sequence lengths it would otherwise recompute, with a device
sync, in every layer. `input_device` is where inputs go, also for a model that accelerate
spread over devices or offloaded.

This module knows nothing about skipping, drafting or tasks; it imports torch and
transformers only.
"""

from __future__ import annotations

import functools
import inspect

import torch
from transformers import DynamicCache


@functools.cache
def _keyword_of(function) -> str:
    parameters = inspect.signature(function).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def cache_keyword(callable_) -> str:
    """"cache" or "past_key_values": what `callable_` (a module, its class or a function) calls the KV cache."""
    if isinstance(callable_, torch.nn.Module):
        callable_ = type(callable_).forward
    elif isinstance(callable_, type):
        callable_ = callable_.forward
    return _keyword_of(callable_)


class _Cache(DynamicCache):
    """A DynamicCache that sizes masks from its longest layer.

    transformers sizes the masks of a pass from layer 0 (or the first layer of each attention
    kind). While drafting with that layer's attention skipped, its entries fall behind the
    layers that do attend, and a mask sized from it would be too short for them; every layer
    that attends holds the longest length."""

    def _longest_layer(self) -> int:
        lengths = [layer.get_seq_length() for layer in self.layers]
        return max(range(len(lengths)), key=lengths.__getitem__, default=0)

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        return super().get_mask_sizes(query_length, self._longest_layer())

    def get_query_offset(self, layer_idx: int = 0) -> int:
        return super().get_query_offset(self._longest_layer())


def new_cache() -> DynamicCache:
    """A cache that keeps every position of every layer, so it can be cropped back per layer.

    Sliding-window layers still attend only within their window: the model's masks apply it."""
    return _Cache()


def input_device(model: torch.nn.Module) -> torch.device:
    """The device input ids must be on: the input embeddings' execution device.

    accelerate's hooks record it where the weights live elsewhere (offloaded to the host or
    disk, whose parameters sit on the meta device)."""
    embeddings = model.get_input_embeddings()
    device = getattr(getattr(embeddings, "_hf_hook", None), "execution_device", None)
    if device is not None:
        return torch.device(device)
    return embeddings.weight.device


def model_devices(model: torch.nn.Module) -> frozenset[torch.device]:
    """The devices the model computes on: those its parameters and buffers live on, and the
    execution devices accelerate's hooks bring offloaded weights to (those sit on the meta
    device). Timing waits for these devices and no others."""
    devices = {tensor.device for tensor in (*model.parameters(), *model.buffers()) if tensor.device.type != "meta"}
    for module in model.modules():
        hook = getattr(module, "_hf_hook", None)
        for single in getattr(hook, "hooks", (hook,)):  # a SequentialHook holds several
            device = getattr(single, "execution_device", None)
            if device is not None:
                devices.add(torch.device(device))
    return frozenset(devices)


def _uses_flash_attention(model) -> bool:
    return str(getattr(model.config, "_attn_implementation", "")).startswith("flash_attention")


def run(model, cache: DynamicCache, token_ids: torch.Tensor, start: int, logits_to_keep: int = 0,
        **kwargs):
    """The full (or currently skipped) model over `token_ids` (1, n) at positions start..start+n-1,
    appending to `cache`; returns the model's output (logits of the last `logits_to_keep`
    positions, all when 0)."""
    new_tokens = token_ids.shape[1]
    arguments = {cache_keyword(model): cache, "use_cache": True, "logits_to_keep": logits_to_keep, **kwargs}
    if cache.get_seq_length() != start:  # a shape read, no device sync
        arguments["position_ids"] = torch.arange(start, start + new_tokens, device=token_ids.device).unsqueeze(0)
    if new_tokens > 1 and _uses_flash_attention(model):
        # One sequence: without these, flash-attention checks every layer's positions on the host.
        device = token_ids.device
        arguments.update(
            cu_seq_lens_q=torch.tensor([0, new_tokens], dtype=torch.int32, device=device),
            cu_seq_lens_k=torch.tensor([0, start + new_tokens], dtype=torch.int32, device=device),
            max_length_q=new_tokens,
            max_length_k=start + new_tokens,
        )
    return model(input_ids=token_ids, **arguments)


def crop_cache(cache: DynamicCache, length: int) -> None:
    """Drop every layer's entries past `length`; layers may differ in length after drafting."""
    for layer in cache.layers:
        excess = layer.get_seq_length() - length
        if excess > 0:
            layer.crop(-excess)
