"""The fallback's verdicts kept between processes, in the cache directory.

A `decoding.FallbackMemory` lets later calls of one process skip drafting that proved slower;
a command-line call is a process of its own, so without this every fresh `skipsearch generate`
with a losing profile would pay again for the rounds that prove it. The verdict is kept per
drafting policy, model, dtype and device (what it depends on), with the memory's re-probe
schedule: after a call fell back, the next 7 calls decode plainly, the 8th checks again.
"""

from __future__ import annotations

import hashlib
import json
import logging

from skipsearch.engine.decoding import DecodeSettings, FallbackMemory
from skipsearch.engine.models import cache_root
from skipsearch.engine.skipping import SkipSet
from skipsearch.files import write_atomic

log = logging.getLogger(__name__)


def verdict_key(model: str, dtype: str, device: str, skip_set: SkipSet, settings: DecodeSettings) -> str:
    drafting = [settings.max_draft_tokens, settings.confidence_threshold, repr(settings.ngram),
                repr(settings.costs), repr(settings.policy)]
    text = json.dumps([model, dtype, device, *skip_set.to_dict().values(), drafting])
    return hashlib.sha256(text.encode()).hexdigest()


def _path(key: str):
    return cache_root() / "fallback" / f"{key}.json"


def load_memory(key: str) -> FallbackMemory:
    """The kept verdict, or a fresh memory where there is none (or it cannot be read)."""
    memory = FallbackMemory()
    try:
        memory.plain_calls_left = int(json.loads(_path(key).read_text())["plain_calls_left"])
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring an unreadable fallback verdict %s: %s", _path(key), exc)
    return memory


def save_memory(key: str, memory: FallbackMemory) -> None:
    path = _path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({"plain_calls_left": memory.plain_calls_left}) + "\n")
