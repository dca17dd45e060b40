"""skipsearch: find which sublayers a causal LM can skip to draft for itself, losslessly.

The engine (loading, skipping, drafting and decoding, costs, the lossless check) needs only
torch, transformers and accelerate, so the names of the profile format load on first use:
importing the package, or an engine module, pulls in nothing else.
"""

import importlib

from .errors import SkipsearchError
from .models import LoadedModel, load_model, model_fingerprint
from .skipping import SkipSet, eligible_sublayers, skipping

__version__ = "0.1.0"

_PROFILE_NAMES = (
    "DraftSettings",
    "Profile",
    "ProfileMetrics",
    "ProfileModel",
    "check_profile_for_model",
    "load_profile",
    "parse_profile",
    "profile_schema",
    "save_profile",
)

__all__ = [
    *_PROFILE_NAMES,
    "LoadedModel",
    "SkipSet",
    "SkipsearchError",
    "eligible_sublayers",
    "load_model",
    "model_fingerprint",
    "skipping",
    "__version__",
]


def __getattr__(name: str):
    if name in _PROFILE_NAMES:
        return getattr(importlib.import_module(".profiles", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
