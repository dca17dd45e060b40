"""`skipsearch export-draft PROFILE DIR`: the profile's skipped model as a standalone draft checkpoint, for vLLM
and SGLang (`--format hf`: DeciLM / Nemotron-NAS layout, `skipsearch.config.draft_export`) or for llama.cpp
(`--format gguf`: a GGUF of architecture deci, `skipsearch.config.gguf_export`)."""

from __future__ import annotations

from skipsearch.cli.options import add_model_arguments, model_options
from skipsearch.config.draft_export import check_family, check_skips, check_target, write_draft
from skipsearch.config.gguf_export import check_first_attention, source_gguf, write_gguf_draft
from skipsearch.config.profiles import check_profile_for_model, load_profile
from skipsearch.config.studies import load_study
from skipsearch.engine.models import load_model
from skipsearch.experiments.draft_acceptance import draft_acceptance
from skipsearch.search.runner import prepare

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
                    "with the llama.cpp commands. Either README states the memory the draft adds, and with --study "
                    "the draft's acceptance re-scored on the study's held-out prompts as an engine runs it (its own "
                    "KV cache). Llama-family models only.",
    )
    parser.add_argument("profile", metavar="PROFILE", help="profile .yaml file")
    parser.add_argument("folder", metavar="DIR", help="folder to write (created; must be empty or missing)")
    parser.add_argument("--format", choices=FORMATS, default="hf",
                        help="hf: a DeciLM folder for vLLM and SGLang (default); gguf: a deci GGUF for llama.cpp")
    parser.add_argument("--force", action="store_true", help="replace a non-empty DIR (everything in it is removed)")
    parser.add_argument("--study", metavar="STUDY.yaml",
                        help="re-score the draft on this study's held-out prompts with its own KV cache, as an engine "
                             "runs it, and write the acceptance into DIR/README.md")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_model_arguments(parser, optional_for="export its weights (default: the profile's model.name)")
    parser.set_defaults(func=run)


def run(args) -> int:
    profile = load_profile(args.profile)
    check_family(profile.model.architecture)  # before loading weights it could not export
    check_skips(profile.skip)
    name = args.model or profile.model.name
    check_target(args.folder, args.force, None)  # again when writing; here before the slow steps
    study = load_study(args.study) if args.study else None
    if args.format == "gguf":
        source = source_gguf(name)
        check_first_attention(profile.skip)
    loaded = load_model(name, **model_options(args))
    check_profile_for_model(profile, loaded.model)  # the fingerprint: the GGUF is the file the model loaded from
    acceptance = None
    if study is not None:
        setup = prepare(study, progress=not args.no_progress, loaded=loaded)
        acceptance = draft_acceptance(loaded.model, setup.heldout_refs, profile.skip, profile.draft.max_draft_tokens,
                                      profile.draft.confidence_threshold,
                                      f"{len(setup.heldout_refs)} held-out prompts of study {study.name}",
                                      costs=setup.time_costs())
        print(f"re-scored on {acceptance.prompts}: drafts of up to {acceptance.draft_tokens} "
              f"token{'s' if acceptance.draft_tokens != 1 else ''} stopping below "
              f"{acceptance.p_min}, predicted {acceptance.predicted_speedup:.2f}x plain decoding with this machine's "
              f"costs; accepted / drafted {acceptance.own_acceptance:.3f} with the draft's own KV cache (an engine), "
              f"{acceptance.shared_acceptance:.3f} with the full model's (skipsearch's runtime)")
        if acceptance.predicted_speedup < 1:
            print("the draft is not predicted to pay in an engine here: its own KV cache lowers acceptance and it "
                  "costs what it keeps; prefer the engine's n-gram drafting, or search for it with "
                  "`skipsearch search STUDY --draft-cache own`")
    if args.format == "gguf":
        written = write_gguf_draft(source, profile, args.folder, force=args.force, acceptance=acceptance)
        memory = written.memory
        print(f"wrote {written.file}: {profile.skip.describe()} left out; the draft adds {memory.weights} bytes of "
              f"weights and {memory.kv_per_token} bytes of KV cache per token (see {args.folder}/README.md)")
        return 0
    memory = write_draft(loaded.model, loaded.tokenizer, profile, args.folder, force=args.force, source=loaded.source,
                         acceptance=acceptance)
    print(f"wrote {args.folder}: {profile.skip.describe()} left out; the draft adds {memory.weights} bytes of "
          f"weights and {memory.kv_per_token} bytes of KV cache per token (see {args.folder}/README.md)")
    return 0
