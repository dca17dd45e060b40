"""The costs a drafting policy decides with, timed on the device that decodes, kept in the cache.

A profile's `draft.costs` were timed where the search ran: another machine, another GPU, or
the same machine under another load (a verify pass timed under load can even come out cheaper
than a plain step, and a policy deciding by it drafts where drafting loses). A runtime decides
better with its own device's costs. They depend on the model's shapes, dtype, attention
implementation, the device and the context length, not on the weights, so they are timed once
per such key and context bucket (a power of two) and read back from the cache directory.
"""

from __future__ import annotations

import hashlib
import json
import logging

import torch

from skipsearch.engine import forward
from skipsearch.engine.costs import CostModel, describe_device, measure_costs
from skipsearch.engine.models import attention_of, cache_root, dtype_name
from skipsearch.errors import SkipsearchError
from skipsearch.files import write_atomic

log = logging.getLogger(__name__)

_SHAPE_KEYS = ("model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
               "num_key_value_heads", "vocab_size")


def context_bucket(tokens: int) -> int:
    """The power of two at or above `tokens` (at least 64): costs are timed per bucket."""
    bucket = 64
    while bucket < tokens:
        bucket *= 2
    return bucket


def cost_key(model: torch.nn.Module, context_tokens: int, verify_tokens: int) -> str:
    device = forward.input_device(model)
    shapes = [getattr(model.config, key, None) for key in _SHAPE_KEYS]
    dtype = dtype_name(model.get_input_embeddings().weight.dtype)
    device_map = sorted(map(str, (getattr(model, "hf_device_map", None) or {}).values()))
    text = json.dumps([shapes, dtype, attention_of(model), describe_device(device), device_map,
                       context_tokens, verify_tokens])
    return hashlib.sha256(text.encode()).hexdigest()


def costs_here(model: torch.nn.Module, context_tokens: int, verify_tokens: int, repeats: int = 3) -> CostModel:
    """The model's costs on its device at the bucket of `context_tokens`, timed on first use
    (a few seconds on a CPU, less on a GPU) and cached; `verify_tokens`: the longest pass."""
    context = context_bucket(context_tokens)
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions is not None:
        context = max(1, min(context, max_positions - verify_tokens))
    path = cache_root() / "costs" / f"{cost_key(model, context, verify_tokens)}.json"
    try:
        return CostModel.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError, SkipsearchError) as exc:  # timed again, not fatal
        log.warning("ignoring unreadable device costs %s: %s", path, exc)
    log.info("timing this device's forward passes for the drafting policy (once; kept in %s)", path.parent)
    costs = measure_costs(model, context_tokens=context, max_verify_tokens=verify_tokens, repeats=repeats)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(costs.to_dict()) + "\n")
    return costs
