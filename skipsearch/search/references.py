"""Reference continuations: the full model's greedy answers to the search prompts, cached on disk.

A search scores thousands of candidates against the same continuations, and re-running a
study must not regenerate them, so they are stored under the cache directory keyed by
the model fingerprint, the task, the prompt's token ids and the length, and by the dtype and
attention implementation the model runs in: the fingerprint is the same in every dtype, but
a bfloat16 model's greedy continuation can differ from its float32 one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from skipsearch.engine.decoding import DecodeSettings, decode
from skipsearch.engine.models import attention_of, cache_root, dtype_name
from skipsearch.files import write_atomic


@dataclass(frozen=True)
class Reference:
    prompt_id: str
    prompt_ids: tuple[int, ...]
    continuation: tuple[int, ...]  # the full model's greedy continuation


def _cache_file(fingerprint: str, numerics: list[str], task: str, prompt_ids: list[int], length: int) -> Path:
    key = json.dumps([fingerprint, *numerics, task, list(prompt_ids), length]).encode()
    return cache_root() / "references" / f"{hashlib.sha256(key).hexdigest()}.json"


def reference_continuations(
    model,
    fingerprint: str,
    task: str,
    prompts: list[tuple[str, list[int]]],
    length: int,
    progress: bool = False,
) -> list[Reference]:
    """The full model's greedy continuation of each (prompt id, token ids), at most `length` tokens."""
    references = []
    numerics = [dtype_name(model.dtype), attention_of(model)]
    for prompt_id, prompt_ids in tqdm(prompts, desc="reference continuations", disable=not progress, leave=False):
        path = _cache_file(fingerprint, numerics, task, prompt_ids, length)
        try:
            continuation = json.loads(path.read_text())["continuation"]
        except (OSError, ValueError, KeyError):
            result = decode(model, prompt_ids, None, DecodeSettings.plain(length))
            continuation = result.token_ids
            write_atomic(path, json.dumps({"prompt_id": prompt_id, "continuation": continuation}),
                         what="reference cache", make_folder=True)
        references.append(Reference(prompt_id, tuple(prompt_ids), tuple(continuation)))
    return references
