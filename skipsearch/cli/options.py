"""The arguments several commands share, declared once with one set of rules:

- the model: --model, and how it is loaded (--dtype, --device, --device-map, --attn-implementation);
  `add_model_arguments` for a command that names its model, `add_model_options` for the loading
  options alone (a study's commands, whose model is the study's);
- what the draft skips: --profile, or --skip-attention/--skip-mlp (`add_skip_arguments`,
  `skip_source`, `skip_for_model`; one LAYERS syntax, `parse_layers`);
- how it drafts: --max-draft-tokens, --confidence-threshold, --policy-costs (`add_draft_arguments`,
  `draft_limits`; the defaults are the engine's, `drafting.DEFAULT_*`);
- a study and its overrides: STUDY.yaml, --trials, --sampler, --objective, --skip-budget, --storage,
  --seed, --data, --category and the loading options (`add_study_overrides`, `configured`), for the
  commands that run a study.

Bad values are one SkipsearchError line naming the flag, what it takes and what it got."""

from __future__ import annotations

import json

from skipsearch.config.profiles import Profile, check_profile_for_model, load_profile
from skipsearch.config.studies import (
    DRAFT_CACHES,
    OBJECTIVES,
    SAMPLERS,
    apply_overrides,
    default_storage_url,
    load_study,
    parse_skip_budget,
)
from skipsearch.engine.drafting import DEFAULT_CONFIDENCE_THRESHOLD, DEFAULT_MAX_DRAFT_TOKENS
from skipsearch.engine.models import (
    ATTN_IMPLEMENTATIONS,
    DEFAULT_MODEL,
    DEVICE_MAP_EXPECTED,
    DEVICE_MAP_STRATEGIES,
    DTYPE_CHOICES,
    is_device_map,
)
from skipsearch.engine.skipping import SkipSet, decoder_layers
from skipsearch.errors import SkipsearchError

OPTIONS = ("dtype", "device", "device_map", "attn_implementation")
# --policy-costs of the commands that decode with a profile: what its drafting policy weighs by
POLICY_COSTS = ("here", "profile")
EXAMPLE_MAP = '{"model.embed_tokens": 0, "model.layers": 0, "": "cpu"}'
MODEL_KINDS = "embedded name, hub id, model folder or .gguf file"
SKIP_FLAGS = ("--skip-attention", "--skip-mlp")


# ---------------------------------------------------------------------------- the model


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


def add_model_arguments(parser, optional_for: str | None = None, title: str = "loading the model") -> None:
    """--model and the loading options, in one group of the help. --model defaults to the default
    embedded model; with `optional_for` (what loading it is for, e.g. "check that the profile
    fits it") it has no default and the command loads a model only when it is given."""
    group = parser.add_argument_group(title)
    if optional_for is None:
        group.add_argument("--model", default=DEFAULT_MODEL, metavar="MODEL",
                           help=f"{MODEL_KINDS} (default {DEFAULT_MODEL})")
    else:
        group.add_argument("--model", metavar="MODEL", help=f"also load this model ({MODEL_KINDS}) and {optional_for}")
    _add_loading_options(group, from_study=False)


def add_model_options(parser, from_study: bool = False, title: str = "loading the model") -> None:
    """Add the loading options in a group of the help; with `from_study` each option given overrides
    the study's `model:` section, and an option left out keeps the study's value."""
    _add_loading_options(parser.add_argument_group(title), from_study)


def _add_loading_options(group, from_study: bool) -> None:
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


# ---------------------------------------------------------------------------- what the draft skips


def parse_layers(text: str, flag: str) -> tuple[int, ...]:
    """LAYERS: "3,5,7" -> (3, 5, 7); "" -> (). Distinct 0-based indices; spaces around them are fine."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    try:
        layers = tuple(int(part) for part in parts)
    except ValueError:
        layers = None
    if layers is None or any(layer < 0 for layer in layers) or len(set(layers)) != len(layers):
        raise SkipsearchError(f"{flag} takes distinct 0-based layer indices separated by commas, such as 3,5,7; "
                              f"got {text!r}")
    return layers


def add_skip_arguments(parser, title: str = "what the draft skips") -> None:
    """--profile, or --skip-attention/--skip-mlp; `skip_source` reads them."""
    group = parser.add_argument_group(title, "a profile or skip lists, not both; neither: nothing is skipped")
    group.add_argument("--profile", metavar="FILE",
                       help="skip profile .yaml: the skip set and draft settings to draft with")
    group.add_argument("--skip-attention", metavar="LAYERS",
                       help="0-based layers whose attention block the draft skips, e.g. 3,5 (instead of --profile)")
    group.add_argument("--skip-mlp", metavar="LAYERS",
                       help="0-based layers whose MLP block the draft skips, e.g. 7 (instead of --profile)")


def skip_source(args) -> Profile | SkipSet:
    """The profile --profile names (read and checked as a file), else the SkipSet of the skip lists
    (empty without them). Needs no model: bad input fails before one is loaded."""
    given = [flag for flag in SKIP_FLAGS if getattr(args, flag[2:].replace("-", "_")) is not None]
    if args.profile is not None and given:
        raise SkipsearchError(f"--profile and {'/'.join(given)} both say what the draft skips; give the profile "
                              "alone, or leave out --profile and list the layers")
    if args.profile is not None:
        if not args.profile.strip():
            raise SkipsearchError(f"--profile takes the path of a profile .yaml file; got {args.profile!r}")
        return load_profile(args.profile)
    return SkipSet(attention=parse_layers(args.skip_attention or "", "--skip-attention"),
                   mlp=parse_layers(args.skip_mlp or "", "--skip-mlp"))


def skip_for_model(source: Profile | SkipSet, model) -> SkipSet:
    """The skip set to draft with on the loaded `model`: a profile's once it is checked to be made
    for the model, or the skip lists' once each index is one of its layers."""
    num_layers = len(decoder_layers(model))
    if isinstance(source, Profile):
        check_profile_for_model(source, model)
        source.skip.check_against(num_layers)
        return source.skip
    for flag, layers in zip(SKIP_FLAGS, (source.attention, source.mlp)):
        outside = [layer for layer in layers if layer >= num_layers]
        if outside:
            raise SkipsearchError(f"{flag} takes layer indices 0..{num_layers - 1} for this model ({num_layers} "
                                  f"decoder layers); got {','.join(map(str, outside))}")
    return source


# ---------------------------------------------------------------------------- how it drafts


def _max_draft_tokens(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise SkipsearchError(f"--max-draft-tokens takes a whole number >= 1; got {text!r}")
    return value


def _confidence_threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise SkipsearchError(f"--confidence-threshold takes a probability in [0, 1]; got {text!r}")
    return value


def add_draft_arguments(parser, title: str = "drafting") -> None:
    """--max-draft-tokens, --confidence-threshold (`draft_limits` reads them) and --policy-costs."""
    group = parser.add_argument_group(title)
    group.add_argument("--max-draft-tokens", type=_max_draft_tokens, metavar="N",
                        help="tokens a layer-skip draft proposes per round at most "
                             f"(default: the profile's, else {DEFAULT_MAX_DRAFT_TOKENS})")
    group.add_argument("--confidence-threshold", type=_confidence_threshold, metavar="P",
                        help="stop drafting when the draft's top-1 probability is below P, in [0, 1]; 0 never "
                             f"stops early (default: the profile's, else {DEFAULT_CONFIDENCE_THRESHOLD})")
    group.add_argument("--policy-costs", choices=POLICY_COSTS, default="here",
                        help="what a profile's drafting policy weighs its options by: 'here' (default) the costs "
                             "of forward passes timed on this device; 'profile' the costs the search stored, timed "
                             "on its machine")


def draft_limits(args, source: Profile | SkipSet | None = None) -> tuple[int, float]:
    """(max_draft_tokens, confidence_threshold): each flag given wins over the profile (where
    `source` is one), which wins over the defaults."""
    draft_tokens, threshold = DEFAULT_MAX_DRAFT_TOKENS, DEFAULT_CONFIDENCE_THRESHOLD
    if isinstance(source, Profile):
        draft_tokens, threshold = source.draft.max_draft_tokens, source.draft.confidence_threshold
    if args.max_draft_tokens is not None:
        draft_tokens = args.max_draft_tokens
    if args.confidence_threshold is not None:
        threshold = args.confidence_threshold
    return draft_tokens, threshold


# ---------------------------------------------------------------------------- a study and its overrides

def add_study_overrides(parser) -> None:
    parser.add_argument("study", metavar="STUDY.yaml", help="study config (see studies/)")
    parser.add_argument("--trials", type=int, metavar="N", help="finished trials the study should hold in total")
    parser.add_argument("--sampler", choices=SAMPLERS)
    parser.add_argument("--objective", choices=OBJECTIVES)
    parser.add_argument("--skip-budget", type=parse_skip_budget, metavar="K",
                        help="sublayers to skip: a fraction of the eligible ones (0.2) or a count (11)")
    parser.add_argument("--storage", metavar="URL",
                        help="where the study lives: sqlite:///FILE.db (default: a SQLite file next to the study), "
                             "postgresql://USER:PASSWORD@HOST:PORT/DB (many machines) or FILE.log (an Optuna "
                             "journal file on a shared file system)")
    parser.add_argument("--seed", type=int, metavar="S")
    parser.add_argument("--draft-cache", choices=DRAFT_CACHES,
                        help="score drafts on the full model's KV cache (shared: skipsearch's runtime) or on "
                             "their own (own: an engine's exported draft model); default the study's "
                             "search.draft_cache")
    parser.add_argument("--data", metavar="FILE", help="task data file (specbench, datasets)")
    parser.add_argument("--category", metavar="NAME", help="task category to keep")
    parser.add_argument("--heldout-prompts", type=int, metavar="N",
                        help="held-out prompts the best candidates are decoded on (default: the study's "
                             "task.heldout_prompts)")
    add_model_options(parser, from_study=True)


def configured(args):
    """The study config with command-line overrides, its storage URL and output paths."""
    config = load_study(args.study)
    config = apply_overrides(config, trials=args.trials, sampler=args.sampler, objective=args.objective,
                             skip_budget=args.skip_budget, storage=args.storage, seed=args.seed,
                             draft_cache=args.draft_cache, data=args.data,
                             category=args.category, heldout_prompts=args.heldout_prompts,
                             output_profile=getattr(args, "output", None),
                             **model_options(args))
    return config, default_storage_url(config, args.study)
