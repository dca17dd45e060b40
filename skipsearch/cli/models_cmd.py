"""`skipsearch models`: the embedded model names and where each comes from."""

from __future__ import annotations

from skipsearch.engine.models import DEFAULT_MODEL, EMBEDDED_MODELS, embedded_model_path
from skipsearch.errors import SkipsearchError


def register(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list the embedded model names")
    parser.set_defaults(func=run)


def run(args) -> int:
    for name, entry in EMBEDDED_MODELS.items():
        try:
            where = str(embedded_model_path(name))
        except SkipsearchError as exc:
            where = f"not installed ({exc})"
        default = " (default)" if name == DEFAULT_MODEL else ""
        print(f"{name}{default}\n  {entry.description}\n  package: {entry.distribution}\n  file: {where}")
    print("Any Hugging Face hub id, local model folder or .gguf file works too.")
    return 0
