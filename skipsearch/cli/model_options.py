"""The options that say how a model is loaded, the same in every command that loads one:
--dtype, --device, --device-map and --attn-implementation."""

from __future__ import annotations

import json

from skipsearch.engine.models import (
    ATTN_IMPLEMENTATIONS,
    DEVICE_MAP_EXPECTED,
    DEVICE_MAP_STRATEGIES,
    DTYPE_CHOICES,
    is_device_map,
)
from skipsearch.errors import SkipsearchError

OPTIONS = ("dtype", "device", "device_map", "attn_implementation")
# --policy-costs of the commands that decode with a profile: what its drafting policy weighs by
POLICY_COSTS = ("here", "profile")
EXAMPLE_MAP = '{"model.embed_tokens": 0, "model.layers": 0, "": "cpu"}'


def parse_device_map(text: str) -> str | dict:
    """A strategy or device name as it is, or a JSON object of module name to device."""
    value = text
    if text.lstrip().startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SkipsearchError(f"--device-map: not valid JSON ({exc.msg} at character {exc.pos}); "
                                  f"write it like '{EXAMPLE_MAP}'") from None
    if value is None or not is_device_map(value):
        raise SkipsearchError(f"--device-map: expected {DEVICE_MAP_EXPECTED}, got {text!r}")
    return value


def device_map_argument(value: str | dict) -> str:
    """--device-map's text for a value `parse_device_map` returned."""
    return value if isinstance(value, str) else json.dumps(value)


def add_model_options(parser, from_study: bool = False, title: str = "loading the model") -> None:
    """Add the options in a group of the help; with `from_study` each option given overrides the
    study's `model:` section, and an option left out keeps the study's value."""
    group = parser.add_argument_group(title)

    def default(field: str, standalone: str) -> str:
        return f"(default: the study's model.{field})" if from_study else f"(default {standalone})"

    group.add_argument("--dtype", choices=DTYPE_CHOICES, default=None if from_study else "auto",
                       help="dtype of the weights: auto = bfloat16 on a CUDA GPU that supports it, else float16 "
                            f"on CUDA, float32 on CPU {default('dtype', 'auto')}")
    group.add_argument("--device", default=None if from_study else "auto",
                       help=f"auto (CUDA when available), cpu or cuda[:N] {default('device', 'auto')}")
    group.add_argument("--device-map", type=parse_device_map, metavar="MAP",
                       help="where each module goes, for a model larger than one GPU: "
                            f"{', '.join(DEVICE_MAP_STRATEGIES)} "
                            "(accelerate spreads it over the GPUs, then CPU and disk), one device, or a JSON object "
                            f"of module name to device such as '{EXAMPLE_MAP}'; needs --device auto "
                            f"{default('device_map', 'none')}")
    group.add_argument("--attn-implementation", choices=ATTN_IMPLEMENTATIONS,
                       help="attention kernels; flash_attention_2 needs the flash-attn package, CUDA and bfloat16 "
                            "or float16 "
                            f"{default('attn_implementation', 'none: transformers picks, sdpa where it can')}")


def model_options(args) -> dict:
    """The options as keyword arguments of `load_model` and `studies.apply_overrides` (None = not given there)."""
    return {option: getattr(args, option) for option in OPTIONS}
