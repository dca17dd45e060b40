"""`skipsearch generate`: self-speculative generation from a profile or explicit skip lists."""

from __future__ import annotations

import dataclasses
import json
import sys

from skipsearch.cli.options import (
    add_draft_arguments,
    add_model_arguments,
    add_skip_arguments,
    draft_limits,
    model_options,
    skip_for_model,
    skip_source,
)
from skipsearch.config.profiles import Profile, decode_fields
from skipsearch.engine.decoding import DecodeSettings, decode
from skipsearch.engine.models import load_model
from skipsearch.engine.skipping import SkipSet
from skipsearch.engine.verdicts import load_memory, memory_key, save_memory
from skipsearch.search.tasks import check_prompt_fits, format_prompt


def _policy(source: Profile | SkipSet, policy_costs: str) -> dict:
    """A profile's drafting as DecodeSettings fields (ngram, policy, priors, costs); the runtime's
    defaults for skip lists or nothing."""
    if not isinstance(source, Profile):
        return {}
    policy = decode_fields(source, policy_costs)
    del policy["max_draft_tokens"], policy["confidence_threshold"]  # draft_limits: the flags win over these
    return policy


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate", help="generate text with self-speculative decoding (lossless)",
        description="Generate with the full model's output, drafted by the model with sublayers skipped and "
                    "by n-grams of the context, as the runtime's policy chooses each round with this device's "
                    "costs. Without --profile or skip lists it drafts n-grams only; --plain drafts nothing.",
    )
    parser.add_argument("--prompt", required=True, help="the user message")
    add_skip_arguments(parser)
    add_draft_arguments(parser)
    parser.add_argument("--max-new-tokens", type=int, default=128, metavar="N",
                        help="tokens to generate at most (default 128)")
    parser.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 = greedy (default); > 0 samples")
    parser.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling mass (default 1 = off)")
    parser.add_argument("--top-k", type=int, default=0, metavar="K",
                        help="sample among the K likeliest tokens (default 0 = off)")
    parser.add_argument("--seed", type=int, metavar="S", help="random seed for sampling")
    parser.add_argument("--no-chat-template", action="store_true", help="feed the prompt as plain text")
    parser.add_argument("--no-fallback", action="store_true",
                        help="keep drafting even when the clock says it is slower than plain decoding")
    parser.add_argument("--plain", action="store_true", help="decode plainly: draft nothing (for comparison)")
    parser.add_argument("--json", action="store_true", help="print one JSON object with text, token_ids and stats")
    add_model_arguments(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    source = skip_source(args)  # before loading the model: bad flags and profiles fail at once
    loaded = load_model(args.model, **model_options(args))
    model, tokenizer = loaded.model, loaded.tokenizer
    skip_set = skip_for_model(source, model)
    draft_tokens, threshold = draft_limits(args, source)
    policy = _policy(source, args.policy_costs)
    prompt_ids = format_prompt(tokenizer, args.prompt, use_chat_template=not args.no_chat_template)
    check_prompt_fits(prompt_ids, getattr(model.config, "max_position_embeddings", None), args.max_new_tokens,
                      "--prompt")
    settings = DecodeSettings(
        max_new_tokens=args.max_new_tokens, max_draft_tokens=draft_tokens, confidence_threshold=threshold,
        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed,
        fallback=not args.no_fallback, **policy,
    )
    if args.plain:
        skip_set = SkipSet()
        settings = dataclasses.replace(settings, ngram=None, costs=None, fallback=False)
    # what the policy learned outlives the process: a losing drafter is shown to lose once, not per call
    memory = None
    if len(skip_set) or settings.ngram is not None:
        key = memory_key(args.model, loaded.dtype, str(loaded.device), skip_set, settings)
        memory = load_memory(key)

    stream = None
    if not args.json:
        shown: list[int] = []
        printed = [0]

        def stream(tokens: list[int]) -> None:
            shown.extend(tokens)
            text = tokenizer.decode(shown, skip_special_tokens=True)
            sys.stdout.write(text[printed[0]:])
            sys.stdout.flush()
            printed[0] = len(text)

    result = decode(model, prompt_ids, skip_set, settings, on_tokens=stream, memory=memory)
    if memory is not None:
        save_memory(key, memory)
    stats = result.stats.to_dict()
    if args.json:
        text = tokenizer.decode(result.token_ids, skip_special_tokens=True)
        print(json.dumps({"text": text, "token_ids": result.token_ids, "skip": skip_set.describe(), "stats": stats}))
        return 0
    print()
    print(
        f"[{stats['new_tokens']} tokens, {stats['tokens_per_s']:.1f} tokens/s, "
        f"{skip_set.describe()}, rounds {stats['rounds']} ({stats['ngram_rounds']} n-gram, "
        f"{stats['ngram_layer_skip_rounds']} n-gram continued by the skip set), "
        f"acceptance {stats['acceptance_rate']:.2f}, "
        f"mean accepted {stats['mean_accepted_tokens']:.2f}"
        + (f", drafting suspended at token {stats['fallback_at_token']} (slower than plain by the clock)"
           if stats["fell_back"] else "")
        + "]",
        file=sys.stderr,
    )
    return 0
