"""`skipsearch export-draft PROFILE DIR`: the profile's skipped model as a standalone draft checkpoint, for vLLM
and SGLang (`--format hf`: DeciLM / Nemotron-NAS layout, `skipsearch.config.draft_export`) or for llama.cpp
(`--format gguf`: a GGUF of architecture deci, `skipsearch.config.gguf_export`)."""

from __future__ import annotations

from skipsearch.cli.options import add_model_arguments, model_options
from skipsearch.config.draft_export import check_family, write_draft
from skipsearch.config.gguf_export import check_first_attention, source_gguf, write_gguf_draft
from skipsearch.config.profiles import check_profile_for_model, load_profile
from skipsearch.engine.models import load_model

FORMATS = ("hf", "gguf")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export-draft",
        help="write the profile's skipped model as a draft for vLLM and SGLang (DeciLM layout) or llama.cpp (GGUF)",
        description="Write DIR. --format hf (default): config.json (DeciLMForCausalLM, model_type nemotron-nas, "
                    "block_configs with no_op for each skipped block), configuration_decilm.py, model.safetensors "
                    "with the kept weights only, the tokenizer, and a README.md with the vLLM and SGLang commands. "
                    "--format gguf (the model must be a .gguf file or an embedded name): DIR/<model>-draft.gguf of "
                    "architecture deci with the kept tensors in their stored types, the tokenizer and a README.md "
                    "with the llama.cpp commands. Either README states the memory the draft adds. Llama-family "
                    "models only.",
    )
    parser.add_argument("profile", metavar="PROFILE", help="profile .yaml file")
    parser.add_argument("folder", metavar="DIR", help="folder to write (created; must be empty or missing)")
    parser.add_argument("--format", choices=FORMATS, default="hf",
                        help="hf: a DeciLM folder for vLLM and SGLang (default); gguf: a deci GGUF for llama.cpp")
    parser.add_argument("--force", action="store_true", help="replace a non-empty DIR (everything in it is removed)")
    add_model_arguments(parser, optional_for="export its weights (default: the profile's model.name)")
    parser.set_defaults(func=run)


def run(args) -> int:
    profile = load_profile(args.profile)
    check_family(profile.model.architecture)  # before loading weights it could not export
    name = args.model or profile.model.name
    if args.format == "gguf":
        source = source_gguf(name)
        check_first_attention(profile.skip)
    loaded = load_model(name, **model_options(args))
    check_profile_for_model(profile, loaded.model)  # the fingerprint: the GGUF is the file the model loaded from
    if args.format == "gguf":
        written = write_gguf_draft(source, profile, args.folder, force=args.force)
        memory = written.memory
        print(f"wrote {written.file}: {profile.skip.describe()} left out; the draft adds {memory.weights} bytes of "
              f"weights and {memory.kv_per_token} bytes of KV cache per token (see {args.folder}/README.md)")
        return 0
    memory = write_draft(loaded.model, loaded.tokenizer, profile, args.folder, force=args.force, source=loaded.source)
    print(f"wrote {args.folder}: {profile.skip.describe()} left out; the draft adds {memory.weights} bytes of "
          f"weights and {memory.kv_per_token} bytes of KV cache per token (see {args.folder}/README.md)")
    return 0
