"""`skipsearch export-draft PROFILE DIR`: the profile's skipped model as a standalone draft checkpoint for
vLLM and SGLang (DeciLM / Nemotron-NAS layout; `skipsearch.config.draft_export` says what it holds)."""

from __future__ import annotations

from skipsearch.cli.options import add_model_arguments, model_options
from skipsearch.config.draft_export import check_family, write_draft
from skipsearch.config.profiles import check_profile_for_model, load_profile
from skipsearch.engine.models import load_model


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export-draft",
        help="write the profile's skipped model as a draft checkpoint for vLLM and SGLang (DeciLM layout)",
        description="Write DIR: config.json (DeciLMForCausalLM, model_type nemotron-nas, block_configs with no_op for "
                    "each skipped block), configuration_decilm.py, model.safetensors with the kept weights only, the "
                    "tokenizer, and a README.md with the vLLM and SGLang commands and the memory the draft adds. "
                    "Llama-family models only.",
    )
    parser.add_argument("profile", metavar="PROFILE", help="profile .yaml file")
    parser.add_argument("folder", metavar="DIR", help="folder to write (created; must be empty or missing)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty DIR (everything in it is removed)")
    add_model_arguments(parser, optional_for="export its weights (default: the profile's model.name)")
    parser.set_defaults(func=run)


def run(args) -> int:
    profile = load_profile(args.profile)
    check_family(profile.model.architecture)  # before loading weights it could not export
    loaded = load_model(args.model or profile.model.name, **model_options(args))
    check_profile_for_model(profile, loaded.model)
    memory = write_draft(loaded.model, loaded.tokenizer, profile, args.folder, force=args.force, source=loaded.source)
    print(f"wrote {args.folder}: {profile.skip.describe()} left out; the draft adds {memory.weights} bytes of "
          f"weights and {memory.kv_per_token} bytes of KV cache per token (see {args.folder}/README.md)")
    return 0
