"""skipsearch: find which sublayers a causal LM can skip to draft for itself, losslessly."""

from .errors import SkipsearchError
from .models import LoadedModel, load_model, model_fingerprint
from .skipping import SkipSet, eligible_sublayers, skipping

__version__ = "0.1.0"

__all__ = [
    "LoadedModel",
    "SkipSet",
    "SkipsearchError",
    "eligible_sublayers",
    "load_model",
    "model_fingerprint",
    "skipping",
    "__version__",
]
