"""`skipsearch.experiments.bench`: self-speculative decoding (a skip set, n-gram drafts, a profile's policy)
beside transformers' greedy `generate`, prompt lookup and early exit, on the same prompts in one
process (the rows: `skipsearch.experiments.bench`).

Prints a table and writes `<out-dir>/bench-<model>-<task>.csv` and `.json` (the JSON also
holds the settings, device, versions, the command and every per-prompt run). Exits with
code 1 when a skipsearch method's tokens differ from `generate`'s by more than a tie flip of
reduced precision (the lossless check, `skipsearch.engine.lossless`).
A benchmark, not a test: timings depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import csv
import io
import json
import platform
import re
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from skipsearch.cli.options import (
    add_draft_arguments,
    add_model_arguments,
    add_skip_arguments,
    device_map_argument,
    draft_limits,
    model_options,
    parse_layers,
    skip_for_model,
    skip_source,
)
from skipsearch.config.profiles import Profile, decode_fields
from skipsearch.engine.costs import describe_device
from skipsearch.engine.drafting import NgramSettings
from skipsearch.engine.models import load_model
from skipsearch.engine.skipping import decoder_layers
from skipsearch.errors import SkipsearchError
from skipsearch.experiments.bench import BASELINE, BenchPrompt, BenchResult, BenchSettings, run_bench
from skipsearch.files import write_atomic
from skipsearch.search.tasks import check_prompt_fits, format_prompt, load_task, split_prompts
from skipsearch.version import __version__

DEFAULT_EARLY_EXIT_LAYERS = (4, 8, 12, 16, 20, 24)
DEFAULT_PROMPT_LOOKUP_NUM_TOKENS = (3, 5, 10)
CSV_COLUMNS = ("method", "tokens_per_s", "end_to_end_speedup", "acceptance_rate", "mean_accepted_tokens",
               "predicted_speedup", "identical", "tie_flips", "errors", "new_tokens", "time_s", "fell_back",
               "ngram_rounds", "layer_skip_rounds", "ngram_layer_skip_rounds", "plain_steps", "draft_steps",
               "predicted_by")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark a skip set, n-gram drafting and a profile's policy against generate, prompt lookup "
        "and early exit",
        description="Run greedy transformers generate (the baseline), generate(prompt_lookup_num_tokens=N), "
        "generate(assistant_early_exit=E), and skipsearch's decoder with nothing to draft, with the skip set "
        "drafting every round, with n-gram drafts only (the cost-model policy) and with the profile's policy "
        "(when the profile has one) on the same prompts, interleaved, and report tokens/s, speedup, "
        "acceptance, rounds per drafter and the cost model's predicted speedup.",
    )
    add_skip_arguments(parser)
    add_draft_arguments(parser)
    parser.add_argument("--data", metavar="FILE",
                        help="Spec-Bench-style JSONL (question_id, category, turns); default: HumanEval")
    parser.add_argument("--category", metavar="NAME", help="with --data: keep only prompts of this category")
    parser.add_argument("--prompts", type=int, default=5, metavar="N",
                        help="prompts to run: the first N of a seeded shuffle, which are held-out prompts of a study "
                        "with the same --seed and at least N held-out prompts (default 5)")
    parser.add_argument("--max-new-tokens", type=int, default=96, metavar="N",
                        help="new tokens per prompt (default 96)")
    parser.add_argument("--early-exit-layers", metavar="LAYERS",
                        help="layers E for generate(assistant_early_exit=E), e.g. 4,8; 'none' leaves early exit out "
                        "(default 4,8,12,16,20,24, those the model has)")
    parser.add_argument("--prompt-lookup-num-tokens", metavar="NS",
                        help="values N for generate(prompt_lookup_num_tokens=N), each run, the fastest shown, e.g. "
                        "3,5,10; 'none' leaves prompt lookup out (default 3,5,10)")
    parser.add_argument("--cost-repeats", type=int, default=5, metavar="N",
                        help="timings per configuration for the cost model (the costs of --policy-costs here); "
                        "0 leaves out predicted speedups, and a profile's policy then weighs by the profile's costs "
                        "(default 5)")
    parser.add_argument("--out-dir", default="reports", metavar="DIR",
                        help="where the CSV and JSON go (default reports)")
    add_model_arguments(parser)
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads for torch (default: torch's choice); recorded in the report's device")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed for choosing prompts and the cost model's ids (default 0)")
    parser.set_defaults(func=run)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "model"


def _model_slug(name: str) -> str:
    path = Path(name).expanduser()
    if path.suffix == ".gguf" or path.exists():
        return _slug(path.stem if path.suffix == ".gguf" else path.name)
    return _slug(name)


def _check_args(args) -> None:
    if args.category and not args.data:
        raise SkipsearchError("--category needs --data FILE (a Spec-Bench-style JSONL); HumanEval has no categories")
    if args.prompts < 1:
        raise SkipsearchError(f"--prompts must be >= 1, got {args.prompts}")
    if args.max_new_tokens < 1:
        raise SkipsearchError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.threads is not None and args.threads < 1:
        raise SkipsearchError(f"--threads must be >= 1, got {args.threads}")
    if args.cost_repeats < 0:
        raise SkipsearchError(f"--cost-repeats must be >= 0 (0 leaves predictions out), got {args.cost_repeats}")


def _choose_prompts(args):
    task = load_task("specbench", data=args.data, category=args.category) if args.data else load_task("humaneval")
    count = min(args.prompts, len(task.prompts))
    if count < len(task.prompts):
        _, chosen = split_prompts(task, 1, count, args.seed)
    else:
        chosen = list(task.prompts)
    return task, chosen


def _early_exit_layers(args, num_layers: int) -> tuple[int, ...]:
    if args.early_exit_layers is None:
        return tuple(e for e in DEFAULT_EARLY_EXIT_LAYERS if e < num_layers)
    if args.early_exit_layers.strip().lower() == "none":
        return ()
    return parse_layers(args.early_exit_layers, "--early-exit-layers")


def _prompt_lookup_num_tokens(args) -> tuple[int, ...]:
    text = args.prompt_lookup_num_tokens
    if text is None:
        return DEFAULT_PROMPT_LOOKUP_NUM_TOKENS
    if text.strip().lower() == "none":
        return ()
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if not values or any(v < 1 for v in values):
        raise SkipsearchError(f"--prompt-lookup-num-tokens takes comma-separated counts >= 1 such as 3,5,10, or "
                              f"'none'; got {text!r}")
    return values


def _command_line(args) -> str:
    """The command with every option spelled out, defaults included: enough to rerun it."""
    parts = ["skipsearch", "bench", "--model", args.model]
    if args.profile:
        parts += ["--profile", args.profile]
    for flag, value in (("--skip-attention", args.skip_attention), ("--skip-mlp", args.skip_mlp),
                        ("--max-draft-tokens", args.max_draft_tokens),
                        ("--confidence-threshold", args.confidence_threshold), ("--data", args.data),
                        ("--category", args.category), ("--early-exit-layers", args.early_exit_layers),
                        ("--prompt-lookup-num-tokens", args.prompt_lookup_num_tokens),
                        ("--threads", args.threads), ("--attn-implementation", args.attn_implementation),
                        ("--policy-costs", args.policy_costs if args.profile else None)):
        if value not in (None, ""):
            parts += [flag, str(value)]
    if args.device_map is not None:
        parts += ["--device-map", device_map_argument(args.device_map)]
    parts += ["--prompts", str(args.prompts), "--max-new-tokens", str(args.max_new_tokens),
              "--cost-repeats", str(args.cost_repeats), "--out-dir", args.out_dir, "--device", args.device,
              "--dtype", args.dtype, "--seed", str(args.seed)]
    return shlex.join(parts)


def _csv_text(result: BenchResult) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in result.rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.to_dict().items()})
    return buffer.getvalue()


def _describe_ngram(ngram: NgramSettings | None) -> str:
    if ngram is None:
        return "none"
    return f"{ngram.min_n}-{ngram.max_n} tokens matched, up to {ngram.max_tokens} drafted"


def _describe_policy(settings: BenchSettings) -> str:
    if not settings.has_policy:
        return ""
    costs = "the profile's costs" if settings.policy_costs is not None else "the costs measured here"
    return f"; profile policy: n-grams {_describe_ngram(settings.policy_ngram)}, {costs}"


def _fmt(value, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def table_lines(result: BenchResult) -> list[str]:
    header = ("method", "tokens/s", "end-to-end", "predicted", "acceptance", "accepted/round",
              "rounds ngram/skip/both/plain", "identical/tie/error")
    body = [
        (
            row.method,
            f"{row.tokens_per_s:.1f}",
            f"{row.end_to_end_speedup:.2f}x",
            _fmt(row.predicted_speedup, ".2f", "x"),
            _fmt(row.acceptance_rate, ".2f"),
            _fmt(row.mean_accepted_tokens, ".2f"),
            ("-" if row.ngram_rounds is None
             else f"{row.ngram_rounds}/{row.layer_skip_rounds}/{row.ngram_layer_skip_rounds}/{row.plain_steps}"),
            "baseline" if row.method == BASELINE else f"{row.identical}/{row.tie_flips}/{row.errors}",
        )
        for row in result.rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def fmt(line) -> str:
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))

    return [fmt(header), "  ".join("-" * w for w in widths), *[fmt(line) for line in body]]


def run(args) -> int:
    _check_args(args)
    source = skip_source(args)
    profile = source if isinstance(source, Profile) else None
    task, chosen = _choose_prompts(args)  # before loading the model: data errors show at once

    torch.manual_seed(args.seed)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model, **model_options(args))
    model = loaded.model
    num_layers = len(decoder_layers(model))
    skip_set = skip_for_model(source, model)
    max_draft_tokens, threshold = draft_limits(args, source)
    # the runtime's defaults row drafts with the default n-grams; the profile's row as the runtime reads it
    ngram, policy = NgramSettings(), {}
    if profile is not None:
        fields = decode_fields(profile)
        # without a cost model of its own (--cost-repeats 0) the bench uses the profile's, where it has them
        here = args.policy_costs == "here" and (args.cost_repeats > 0 or profile.draft.costs is None)
        policy = {"policy_ngram": fields["ngram"], "policy": fields["policy"], "policy_priors": fields["priors"],
                  "policy_costs": None if here else profile.draft.costs}
    settings = BenchSettings(
        max_new_tokens=args.max_new_tokens,
        skip_set=skip_set if len(skip_set) else None,
        max_draft_tokens=max_draft_tokens,
        confidence_threshold=threshold,
        early_exit_layers=_early_exit_layers(args, num_layers),
        prompt_lookup_num_tokens=_prompt_lookup_num_tokens(args),
        ngram=ngram,
        cost_repeats=args.cost_repeats,
        **policy,
        seed=args.seed,
        profile=profile,  # the generate(custom_generate=...) row
    )

    max_positions = getattr(model.config, "max_position_embeddings", None)
    prompts = []
    for prompt in chosen:
        ids = format_prompt(loaded.tokenizer, prompt.text)
        check_prompt_fits(ids, max_positions, args.max_new_tokens, prompt.id)
        prompts.append(BenchPrompt(id=prompt.id, token_ids=ids))

    from tqdm import tqdm

    with tqdm(desc="bench", unit="run", file=sys.stderr, dynamic_ncols=True) as bar:
        def progress(done: int, total: int, label: str) -> None:
            bar.total = total
            bar.set_postfix_str(label, refresh=False)
            bar.update(done - bar.n)

        result = run_bench(model, prompts, settings, progress=progress)

    import transformers

    report = {
        "command": _command_line(args),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": args.model, "source": loaded.source, "architecture": model.config.model_type,
                  "num_hidden_layers": num_layers},
        "profile": args.profile,
        "task": task.name,
        "prompt_ids": [p.id for p in prompts],
        "device": result.costs.device if result.costs else describe_device(loaded.device),
        "dtype": loaded.dtype,
        "attn_implementation": loaded.attn_implementation,
        "device_map": loaded.device_map,
        "versions": {"skipsearch": __version__, "torch": torch.__version__,
                     "transformers": transformers.__version__, "python": platform.python_version()},
        **result.to_dict(),
    }
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"bench-{_model_slug(args.model)}-{_slug(task.name)}"
    csv_path, json_path = stem.with_suffix(".csv"), stem.with_suffix(".json")
    write_atomic(csv_path, _csv_text(result))
    write_atomic(json_path, json.dumps(report, indent=2) + "\n")

    print(f"{args.model} on {task.name}: {len(prompts)} prompts x {args.max_new_tokens} new tokens, "
          f"{report['device']}, {loaded.dtype}; skip {skip_set.describe()}, "
          f"up to {settings.max_draft_tokens} draft tokens, confidence {settings.confidence_threshold:g}; "
          f"n-grams {_describe_ngram(settings.ngram)}{_describe_policy(settings)}")
    print("\n".join(table_lines(result)))
    print("end-to-end: speedup of whole calls, tokens/s against generate's, measured; predicted: the cost model "
          "from the run's own counts, "
          "or for rows drafting n-grams without a skip set from replaying the policy over generate's outputs "
          "('-' for a policy with both drafters: its layer-skip drafts cannot be replayed here); rounds: verify "
          "rounds of n-gram drafts / layer-skip drafts / n-gram drafts the skip set continued / plain steps; "
          "identical/tie/error: prompts whose output equals "
          "generate's, differs by a near-tie of the top two tokens (bfloat16/float16 only), or differs otherwise")
    print(f"wrote {csv_path} and {json_path}")
    if result.mismatches:
        where = "; ".join(f"{r.method} on {r.prompt_id}: {r.divergence.describe()}" for r in result.mismatches)
        print(f"skipsearch: error: output differs from generate's ({where}): the lossless check failed",
              file=sys.stderr)
        return 1
    return 0
