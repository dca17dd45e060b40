"""skipsearch: find which sublayers a causal LM can skip to draft for itself, losslessly.

The engine (loading, skipping, drafting and decoding, costs, the lossless check) needs only
torch, transformers and accelerate, so the names of the profile format and the prompt formatter load on
first use: importing the package, or an engine module, pulls in nothing else.
"""

import importlib

from skipsearch.engine.decoding import DecodeSettings, DecodeStats, decode
from skipsearch.engine.drafting import NgramSettings, PolicyMemory, PolicySettings
from skipsearch.engine.models import LoadedModel, load_model, model_fingerprint
from skipsearch.engine.skipping import SkipSet, eligible_sublayers, skipping
from skipsearch.errors import SkipsearchError
from skipsearch.version import __version__

# name -> module, imported on first use
_LAZY = {name: "config.profiles" for name in (
    "DraftSettings",
    "Profile",
    "ProfileMetrics",
    "ProfileModel",
    "check_profile_for_model",
    "decode_settings_for",
    "load_profile",
    "parse_profile",
    "profile_schema",
    "save_profile",
)}
_LAZY["format_prompt"] = "search.tasks"

__all__ = [
    *_LAZY,
    "DecodeSettings",
    "DecodeStats",
    "LoadedModel",
    "NgramSettings",
    "PolicyMemory",
    "PolicySettings",
    "SkipSet",
    "SkipsearchError",
    "decode",
    "eligible_sublayers",
    "load_model",
    "model_fingerprint",
    "skipping",
    "__version__",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module("." + _LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
