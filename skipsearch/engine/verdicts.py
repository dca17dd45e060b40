"""The runtime's memory kept between processes, in the cache directory.

A `drafting.PolicyMemory` lets later calls of one process start from what earlier calls learned
about each drafter's acceptance; a command-line call is a process of its own, so without this
every fresh `skipsearch generate` would start from the priors again (and pay again for the
rounds that show a losing drafter). The memory is kept per profile (skip set and draft
settings), model, dtype and device: what acceptance depends on.
"""

from __future__ import annotations

import hashlib
import json
import logging

from skipsearch.engine.decoding import DecodeSettings
from skipsearch.engine.drafting import PolicyMemory
from skipsearch.engine.models import cache_root
from skipsearch.engine.skipping import SkipSet
from skipsearch.errors import SkipsearchError
from skipsearch.files import write_atomic

log = logging.getLogger(__name__)


def memory_key(model: str, dtype: str, device: str, skip_set: SkipSet, settings: DecodeSettings) -> str:
    drafting = [settings.max_draft_tokens, settings.confidence_threshold, repr(settings.ngram),
                repr(settings.priors), repr(settings.policy)]
    text = json.dumps([model, dtype, device, *skip_set.to_dict().values(), drafting])
    return hashlib.sha256(text.encode()).hexdigest()


def _path(key: str):
    return cache_root() / "policy" / f"{key}.json"


def load_memory(key: str) -> PolicyMemory:
    """The kept memory, or a fresh one where there is none (or it cannot be read)."""
    try:
        return PolicyMemory.from_dict(json.loads(_path(key).read_text()))
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SkipsearchError) as exc:
        log.warning("ignoring an unreadable policy memory %s: %s", _path(key), exc)
    return PolicyMemory()


def save_memory(key: str, memory: PolicyMemory) -> None:
    path = _path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(memory.to_dict()) + "\n")
