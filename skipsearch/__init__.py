"""skipsearch: find which sublayers a causal LM can skip to draft for itself, losslessly."""

from .errors import SkipsearchError
from .models import LoadedModel, load_model, model_fingerprint
from .profiles import (
    DraftSettings,
    Profile,
    ProfileMetrics,
    ProfileModel,
    check_profile_for_model,
    load_profile,
    parse_profile,
    profile_schema,
    save_profile,
)
from .skipping import SkipSet, eligible_sublayers, skipping

__version__ = "0.1.0"

__all__ = [
    "DraftSettings",
    "LoadedModel",
    "Profile",
    "ProfileMetrics",
    "ProfileModel",
    "SkipSet",
    "SkipsearchError",
    "check_profile_for_model",
    "eligible_sublayers",
    "load_model",
    "load_profile",
    "model_fingerprint",
    "parse_profile",
    "profile_schema",
    "save_profile",
    "skipping",
    "__version__",
]
