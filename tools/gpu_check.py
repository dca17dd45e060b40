"""The GPU check: the tests marked `cuda`, the engine timed on a model of a real size, and, with
`--model`, real weights: acceptance, a measured speedup and the lossless counts.

Run it as `make gpu-check` (or `python tools/gpu_check.py`) from the source tree on a machine
with CUDA; `make gpu-check MODEL=PATH` adds `--model PATH`. It needs torch, transformers and
accelerate; `--model` with a `.gguf` needs gguf, and the short search optuna and
bayesian-optimization: `make gpu-wheels` downloads what the GPU image lacks or has too old into
.gpu-wheels/, to carry along (tools/gpu_weights.py sends weights over 64 MiB in two halves).
Versions outside the ranges pyproject.toml states are warned of; the run goes on.

The parts, each timed (`seconds_by_part` in the JSON), in this order:

- `cuda_tests`: tests/test_cuda.py, in a subprocess with a timeout;
- `random_model`: a randomly initialised model of a real shape (Llama-3.1-8B's by default, in
  the dtype `auto` picks; `--config none` leaves it out), which is all that timing needs: the
  cost model (per-block costs and the verify-length curve, timed with CUDA events), the
  decoder's own overhead (plain decoding against `generate`, interleaved), the predicted
  speedup of an evenly spaced skip set at a few assumed acceptance rates, and the lossless
  check in reduced precision. EOS is cleared from the config and the generation config alike,
  so both decoders make every token asked for;
- with `--model PATH` (a model folder or a .gguf): `model_load`; `skip_profile`: the profile
  `--profile` names, else a short search (`--trials`, on prompts of an embedded task, costs timed
  with CUDA events, the best candidate re-scored by the real decoder); `model_bench`: on other
  prompts of the task, `generate`, its prompt lookup and skipsearch's decoder with that profile
  (also through `generate(custom_generate=...)`), interleaved: measured tokens/s and speedups,
  acceptance and each output against `generate`'s (identical, tie flip, error); `sampling`: one
  sampled `custom_generate` call.

Peak GPU memory is recorded per part. A part that would start after `--budget-seconds` is left
out and says so. One JSON summary is written (default reports/gpu-check.json) and a one-screen
summary printed. On a machine without CUDA it says so in one line and exits 0; `--device cpu`
with `--config tiny` and few tokens is a dry run (the tests run one).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Llama-3.1-8B's shapes (config.json of meta-llama/Llama-3.1-8B); "tiny" is for dry runs on a CPU
CONFIGS = {
    "llama-3.1-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                         rope_theta=500000.0, rms_norm_eps=1e-5, bos_token_id=128000, eos_token_id=128001,
                         rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    "tiny": dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048),
}
ACCEPTANCE_RATES = (0.5, 0.7, 0.8, 0.9)
# the packages whose versions the JSON records, each checked against the range pyproject.toml
# states for it, if any; the first three the check cannot run without
PACKAGES = ("torch", "transformers", "accelerate", "gguf", "optuna", "safetensors", "huggingface_hub", "tokenizers")
REQUIRED = PACKAGES[:3]
# The embedded task: the search scores on SEARCH_PROMPTS of the first prompts and re-scores on
# HELDOUT_PROMPTS more; the bench runs on the others, so the profile is measured on prompts it was
# not searched on. Code, rewriting and extraction give prompt lookup n-grams to find; the rest do not.
SEARCH_PROMPTS, HELDOUT_PROMPTS = 3, 1
PROMPTS = (
    ("code", "Write a Python function that returns the n-th Fibonacci number iteratively, with a docstring."),
    ("qa", "Why is the sky blue? Answer in three sentences."),
    ("rewrite", "Rewrite this sentence in the passive voice: The committee approved the new budget on Monday "
                "after a long debate about the costs of the new library."),
    ("math", "A train travels 180 km in 2 hours and then 120 km in 1.5 hours. What is its average speed? "
             "Show each step."),
    ("code", "Complete this function:\n\ndef is_palindrome(text: str) -> bool:\n    \"\"\"Return True if text "
             "reads the same forwards and backwards, ignoring case and spaces.\"\"\"\n"),
    ("summary", "Summarise in two sentences: The city council met on Tuesday to discuss the new park. The park "
                "will have a playground, a pond and a cafe. The council voted to fund the park next year."),
    ("extract", "List every name in this text, one per line: Alice met Bob at the station, and later Carol "
                "and Dave joined Alice and Bob for dinner."),
    ("writing", "Write a short poem about the sea at night."),
    ("translation", "Translate into French: The weather is nice today, so we are going to the beach."),
    ("code", "Write a SQL query that returns the ten customers with the highest total order value from tables "
             "customers(id, name) and orders(id, customer_id, amount)."),
)


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "reports" / "gpu-check.json"), help="the JSON summary to write")
    parser.add_argument("--config", choices=[*CONFIGS, "none"], default="llama-3.1-8b",
                        help="shapes of the randomly initialised model; none leaves that part out")
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu for a dry run")
    parser.add_argument("--dtype", default="auto", help="auto (bfloat16 where the GPU supports it), bfloat16, ...")
    parser.add_argument("--context", type=int, default=512, help="prompt tokens of the random model (default 512)")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens per decoding call (default 128)")
    parser.add_argument("--no-tests", action="store_true", help="leave out the tests marked cuda")
    parser.add_argument("--tests-timeout", type=int, default=180, help="seconds the cuda tests may take (default 180)")
    parser.add_argument("--model", metavar="PATH", help="real weights: a model folder or a .gguf file")
    parser.add_argument("--profile", metavar="PROFILE.yaml", help="the skip profile for --model (default: a short "
                                                                   "search here)")
    parser.add_argument("--trials", type=int, default=8, help="trials of the short search (default 8)")
    parser.add_argument("--search-tokens", type=int, default=32,
                        help="reference tokens per prompt of the short search (default 32)")
    parser.add_argument("--prompts", type=int, default=4, choices=range(1, len(PROMPTS) - SEARCH_PROMPTS
                                                                          - HELDOUT_PROMPTS + 1),
                        metavar="N", help="bench prompts for --model (default 4)")
    # 8 minutes on one H200 with the machine's start (1-2 minutes), the wheels' install and the
    # part still running when the budget runs out (the bench: about a minute)
    parser.add_argument("--budget-seconds", type=int, default=300,
                        help="parts that would start later than this are left out (default 300)")
    args = parser.parse_args(argv)
    if args.profile and not args.model:
        parser.error("--profile needs --model")
    for name in ("context", "new_tokens", "trials", "search_tokens", "tests_timeout", "budget_seconds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _tested_ranges() -> dict[str, str]:
    """Name -> the version range pyproject.toml states, the one place it is written."""
    import tomllib
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(line) for line in project["dependencies"]]
    return {r.name: str(r.specifier) for r in requirements if r.name in PACKAGES}


def _out_of_range(versions: dict[str, str | None]) -> list[str]:
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    warnings = []
    for name, spec in _tested_ranges().items():
        found = versions.get(name)
        if found is None:
            if name in REQUIRED:
                warnings.append(f"{name} is not installed (tested: {spec})")
        elif Version(found).release and not SpecifierSet(spec).contains(Version(found).base_version):
            warnings.append(f"{name} {found} is outside the tested range {spec}")
    return warnings


class Parts:
    """Runs the check's parts in order, each timed into `seconds_by_part`, none after the budget."""

    def __init__(self, summary: dict, budget_seconds: float):
        self.summary, self.budget = summary, budget_seconds
        self.started = time.perf_counter()
        summary["seconds_by_part"] = {}

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def run(self, name: str, part, *args):
        """`part(*args)`, or None (the part named in `skipped_parts`) once the budget is spent."""
        if self.elapsed > self.budget:
            self.summary.setdefault("skipped_parts", []).append(name)
            return None
        print(f"gpu-check: {name} (at {self.elapsed:.0f} s)", flush=True)  # where a long run is
        started = time.perf_counter()
        result = part(*args)
        self.summary["seconds_by_part"][name] = round(time.perf_counter() - started, 2)
        return result


def _peak_memory_gib(device) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    peak = torch.cuda.max_memory_allocated() / 2**30
    torch.cuda.reset_peak_memory_stats()
    return round(peak, 2)


def _run_cuda_tests(timeout_s: int) -> dict:
    try:
        import pytest  # noqa: F401
    except ImportError:
        return {"ran": False, "why": "pytest is not installed: run `make gpu-wheels` where there is a network and "
                                      "carry .gpu-wheels/ along"}
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-m", "cuda", "-p", "no:cacheprovider",
               str(ROOT / "tests" / "test_cuda.py")]
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"ran": True, "exit_code": None, "summary": f"stopped after the timeout of {timeout_s} s"}
    lines = (done.stdout + done.stderr).strip().splitlines()
    print("\n".join(lines[-15:]))
    return {"ran": True, "exit_code": done.returncode, "summary": lines[-1] if lines else ""}


def _build(config_name: str, dtype, device):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**CONFIGS[config_name])
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    model.eval().requires_grad_(False)
    # random weights: decode the full length every time. skipsearch's decoder falls back to the
    # config's EOS where the generation config has none, so both go.
    model.generation_config.eos_token_id = None
    model.config.eos_token_id = None
    if gpus > 1:
        from accelerate import dispatch_model

        layers = config.num_hidden_layers
        device_map = {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.norm": gpus - 1, "lm_head": gpus - 1}
        device_map.update({f"model.layers.{i}": i * gpus // layers for i in range(layers)})
        model = dispatch_model(model, device_map=device_map)
    return model


def _decoder_overhead(model, prompt: list[int], new_tokens: int, repeats: int = 3) -> dict:
    """Plain decoding with skipsearch's decoder against greedy `generate`, interleaved, whole calls."""
    import torch

    from skipsearch.engine import forward
    from skipsearch.engine.decoding import DecodeSettings, decode
    from skipsearch.engine.timing import Stopwatch

    device, devices = forward.input_device(model), forward.model_devices(model)
    ids = torch.tensor([prompt], device=device)
    settings = DecodeSettings.plain(new_tokens)
    times = {"generate": [], "skipsearch": []}
    made = {}
    with torch.inference_mode():
        for _ in range(repeats + 1):  # the first round warms up
            with Stopwatch(devices, events=False) as watch:
                output = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                        max_new_tokens=new_tokens)
            times["generate"].append(watch.seconds)
            made["generate"] = output.shape[1] - ids.shape[1]
            with Stopwatch(devices, events=False) as watch:
                made["skipsearch"] = len(decode(model, prompt, None, settings).token_ids)
            times["skipsearch"].append(watch.seconds)
    median = {name: statistics.median(values[1:]) for name, values in times.items()}
    return {"new_tokens": made,
            "generate_tokens_per_s": round(made["generate"] / median["generate"], 2),
            "skipsearch_tokens_per_s": round(made["skipsearch"] / median["skipsearch"], 2),
            "ratio": round(median["generate"] / median["skipsearch"], 3)}


def _lossless(model, prompts: list[list[int]], skip_set, new_tokens: int) -> dict:
    from skipsearch.engine.decoding import DecodeSettings, decode
    from skipsearch.engine.lossless import LosslessCounts, classify

    counts = LosslessCounts()
    for prompt in prompts:
        plain = decode(model, prompt, None, DecodeSettings.plain(new_tokens)).token_ids
        drafted = decode(model, prompt, skip_set, DecodeSettings(max_new_tokens=new_tokens, max_draft_tokens=8,
                                                                 confidence_threshold=0.0, fallback=False))
        counts.add(classify(model, prompt, plain, drafted.token_ids))
    return counts.to_dict()


def _best_length(costs, skip_set, acceptance: float) -> dict:
    from skipsearch.engine.prediction import best_draft_length

    draft_tokens, speedup = best_draft_length(costs, skip_set, acceptance, len(costs.verify) - 1)
    return {"draft_tokens": draft_tokens, "speedup": round(speedup, 3)}


def _timer(model) -> str:
    """What the cost model of this model is timed with (`timing.Stopwatch`'s default for its devices)."""
    from skipsearch.engine.forward import model_devices
    from skipsearch.engine.timing import Stopwatch

    return "cuda events" if Stopwatch(model_devices(model)).events else "wall clock"


def _costs_summary(costs) -> dict:
    plain = costs.plain_step
    return {
        "device": costs.device, "context_tokens": costs.context_tokens,
        "plain_step_ms": round(plain * 1000, 3),
        "attention_block_ms": [round(c * 1000, 4) for c in costs.attention],
        "mlp_block_ms": [round(c * 1000, 4) for c in costs.mlp],
        "fixed_ms": round(costs.fixed * 1000, 3),
        "verify_over_plain_step": [round(v / plain, 3) for v in costs.verify],
    }


def _random_model(args, parts: Parts, summary: dict, dtype, device) -> None:
    import torch

    from skipsearch.engine.costs import layer_groups, measure_costs
    from skipsearch.engine.models import dtype_name
    from skipsearch.engine.skipping import SkipSet

    model = parts.run("random_build", _build, args.config, dtype, device)
    if model is None:
        return
    summary["layer_groups"] = [list(group) for group in layer_groups(model)]
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, vocab, (args.context,), generator=generator).tolist() for _ in range(3)]

    costs = parts.run("random_costs", measure_costs, model, args.context, 17, 5)
    if costs is not None:
        summary["costs"] = {**_costs_summary(costs), "timer": _timer(model)}
    overhead = parts.run("random_decoder_overhead", _decoder_overhead, model, prompts[0], args.new_tokens)
    if overhead is not None:
        summary["decoder_overhead"] = overhead
    layers = model.config.num_hidden_layers
    # about 3/8 of the sublayers, spread out: the kind of set a search finds on a 7B-70B model
    skip_set = SkipSet(attention=tuple(range(1, layers - 1, 2)), mlp=tuple(range(3, layers - 1, 4)))
    if costs is not None:
        summary["predicted_speedup"] = {
            "skip_set": skip_set.describe(),
            "by_acceptance": {str(rate): _best_length(costs, skip_set, rate) for rate in ACCEPTANCE_RATES},
        }
    lossless = parts.run("random_lossless", _lossless, model, prompts, skip_set, min(args.new_tokens, 64))
    if lossless is not None:
        summary["lossless"] = {"dtype": dtype_name(dtype), "skip_set": skip_set.describe(), **lossless}
    summary["random_model_peak_gpu_memory_gib"] = _peak_memory_gib(device)


def _task_file(folder: Path) -> Path:
    path = folder / "gpu-check-task.jsonl"
    count = SEARCH_PROMPTS + HELDOUT_PROMPTS
    with open(path, "w") as out:
        for number, (category, text) in enumerate(PROMPTS[:count]):
            out.write(json.dumps({"question_id": number, "category": category, "turns": [text]}) + "\n")
    return path


def _search(loaded, args) -> tuple:
    """A short search on the embedded task's first prompts, kept in memory: its best candidate,
    re-scored by the real decoder on the held-out prompt, as a profile."""
    import optuna

    from skipsearch.config.studies import parse_study
    from skipsearch.search import runner

    with tempfile.TemporaryDirectory() as folder:
        config = parse_study({
            "name": "gpu-check",
            "model": {"name": args.model, "dtype": args.dtype, "device": args.device},
            "task": {"source": "specbench", "data": str(_task_file(Path(folder))), "search_prompts": SEARCH_PROMPTS,
                     "heldout_prompts": HELDOUT_PROMPTS, "reference_tokens": args.search_tokens},
            "search": {"objective": "speedup", "trials": args.trials, "rescore_top": 1},
        }, "gpu-check")
        setup = runner.prepare(config, progress=False, loaded=loaded)
    study = runner.open_configured_study(config, optuna.storages.InMemoryStorage())
    runner.prepare_study(setup, study, progress=False)
    runner.run_search(setup, study, progress=False)
    measurement = runner.rescore(setup, study, top=1, progress=False)[0]
    profile = runner.build_profile(setup, measurement, study, "memory", "tools/gpu_check.py")
    return profile, {"trials": len(runner.completed_trials(study)), "costs_device": setup.costs.device,
                     "cost_timer": _timer(loaded.model), "measured_on_heldout": measurement.to_attrs()}


def _skip_profile(loaded, args) -> tuple:
    from skipsearch.config.profiles import check_profile_for_model, load_profile

    if args.profile is None:
        return _search(loaded, args)
    profile = load_profile(args.profile)
    check_profile_for_model(profile, loaded.model)
    return profile, {"from": args.profile}


def _bench(loaded, profile, args) -> dict:
    """The profile's decoder beside generate and its prompt lookup, on prompts the search did not see."""
    from skipsearch.config.profiles import decode_fields
    from skipsearch.engine.drafting import NgramSettings
    from skipsearch.experiments.bench import BenchPrompt, BenchSettings, run_bench
    from skipsearch.search.tasks import format_prompt

    first = SEARCH_PROMPTS + HELDOUT_PROMPTS
    prompts = [BenchPrompt(f"{number}-{category}", format_prompt(loaded.tokenizer, text))
               for number, (category, text) in enumerate(PROMPTS[first:first + args.prompts], start=first)]
    draft, fields = profile.draft, decode_fields(profile)
    settings = BenchSettings(
        max_new_tokens=args.new_tokens, skip_set=profile.skip if len(profile.skip) else None,
        max_draft_tokens=draft.max_draft_tokens, confidence_threshold=draft.confidence_threshold,
        early_exit_layers=(), prompt_lookup_num_tokens=(3, 10), ngram=NgramSettings(),
        policy_ngram=fields["ngram"], policy=fields["policy"], policy_priors=fields["priors"],
        cost_repeats=3, warmup_tokens=min(8, args.new_tokens), profile=profile)
    result = run_bench(loaded.model, prompts, settings)
    keep = ("new_tokens", "tokens_per_s", "end_to_end_speedup", "acceptance_rate", "mean_accepted_tokens",
            "predicted_speedup", "identical", "tie_flips", "errors", "fell_back")
    rows = {row.method: {key: getattr(row, key) for key in keep} for row in result.rows}
    return {"prompts": len(prompts), "new_tokens": args.new_tokens, "rows": rows,
            "prompt_tokens": [len(p.token_ids) for p in prompts]}


def _sampling(loaded, profile, new_tokens: int) -> dict:
    """One sampled `generate(custom_generate=...)` call (speculative sampling with the profile)."""
    import torch

    from skipsearch import hf
    from skipsearch.engine.decoding import DecodeStats
    from skipsearch.search.tasks import format_prompt

    model = loaded.model
    ids = torch.tensor([format_prompt(loaded.tokenizer, PROMPTS[-1][1])], device=loaded.device)
    stats = DecodeStats()
    torch.manual_seed(0)
    with torch.inference_mode():
        output = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=0.7,
                                top_p=0.9, max_new_tokens=new_tokens, custom_generate=hf.self_speculative,
                                skip_profile=profile, skip_stats=stats)
    return {"new_tokens": output.shape[1] - ids.shape[1], "acceptance_rate": round(stats.acceptance_rate, 3),
            "tokens_per_s": round(stats.tokens_per_s, 2),
            "text": loaded.tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True)[:200]}


def _real_model(args, parts: Parts, summary: dict, device) -> None:
    from skipsearch.engine.models import load_model

    loaded = parts.run("model_load", load_model, args.model, args.dtype, args.device)
    if loaded is None:
        return
    model = loaded.model
    summary["model"] = {"path": args.model, "dtype": loaded.dtype, "layers": model.config.num_hidden_layers,
                        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1)}
    chosen = parts.run("skip_profile", _skip_profile, loaded, args)
    if chosen is None:
        return
    profile, how = chosen
    summary["skip_profile"] = {"skip_set": profile.skip.describe(), "sublayers": len(profile.skip),
                               "max_draft_tokens": profile.draft.max_draft_tokens,
                               "confidence_threshold": profile.draft.confidence_threshold, **how}
    bench = parts.run("model_bench", _bench, loaded, profile, args)
    if bench is not None:
        summary["model_bench"] = bench
    sampled = parts.run("sampling", _sampling, loaded, profile, args.new_tokens)
    if sampled is not None:
        summary["sampling"] = sampled
    summary["model_peak_gpu_memory_gib"] = _peak_memory_gib(device)


def _screen(summary: dict) -> str:
    """The one-screen summary: what each part found, in a line or two."""
    lines = [f"gpu-check {summary['date']}  {', '.join(summary['gpus']) or summary['device']}  "
             + "  ".join(f"{k} {v}" for k, v in summary["versions"].items() if v and k in (*REQUIRED, "python"))]
    lines += [f"  warning: {w}" for w in summary["version_warnings"]]
    tests = summary.get("cuda_tests")
    if tests:
        lines.append(f"cuda tests: {tests.get('summary') or tests.get('why')}")
    if "costs" in summary:
        costs = summary["costs"]
        lines.append(f"random {summary['config']} ({summary['dtype']}, {costs['timer']}): plain step "
                     f"{costs['plain_step_ms']} ms, "
                     f"verify 9/17 tokens {costs['verify_over_plain_step'][8]}/{costs['verify_over_plain_step'][-1]}"
                     " x a step")
    if summary.get("decoder_overhead"):
        overhead = summary["decoder_overhead"]
        lines.append(f"  plain decoding: skipsearch {overhead['skipsearch_tokens_per_s']} tok/s, generate "
                     f"{overhead['generate_tokens_per_s']} tok/s (ratio {overhead['ratio']})")
    if "predicted_speedup" in summary:
        predicted = summary["predicted_speedup"]["by_acceptance"]
        lines.append("  predicted speedup at acceptance " + ", ".join(
            f"{rate}: {value['speedup']}x" for rate, value in predicted.items()))
    if "lossless" in summary:
        lossless = summary["lossless"]
        lines.append(f"  lossless ({lossless['dtype']}): {lossless['identical']} identical, "
                     f"{lossless['tie_flip']} tie flips, {lossless['error']} errors")
    if "model" in summary:
        model = summary["model"]
        lines.append(f"model {model['path']} ({model['parameters_m']}M parameters, {model['dtype']})")
    if "skip_profile" in summary:
        chosen = summary["skip_profile"]
        lines.append(f"  skip profile: {chosen['sublayers']} sublayers ({chosen['skip_set']}), "
                     + (f"{chosen['trials']} search trials" if "trials" in chosen else f"from {chosen['from']}"))
    if "model_bench" in summary:
        bench = summary["model_bench"]
        lines.append(f"  {bench['prompts']} prompts x {bench['new_tokens']} tokens, whole calls against generate:")
        for method, row in bench["rows"].items():
            detail = f"{row['tokens_per_s']:.1f} tok/s  {row['end_to_end_speedup']:.2f}x"
            if row["acceptance_rate"] is not None:
                detail += f"  acceptance {row['acceptance_rate']:.2f}"
            if row["predicted_speedup"] is not None:
                detail += f"  predicted {row['predicted_speedup']:.2f}x"
            if row["identical"] is not None:
                detail += f"  identical {row['identical']}/{bench['prompts']} (ties {row['tie_flips']}, " \
                          f"errors {row['errors']})"
            lines.append(f"    {method:<36} {detail}")
    if "sampling" in summary:
        sampled = summary["sampling"]
        lines.append(f"  sampling (custom_generate): {sampled['new_tokens']} tokens, acceptance "
                     f"{sampled['acceptance_rate']}, {sampled['tokens_per_s']} tok/s")
    memory = [summary.get(key) for key in ("random_model_peak_gpu_memory_gib", "model_peak_gpu_memory_gib")]
    if any(value is not None for value in memory):
        lines.append(f"peak GPU memory: random model {memory[0]} GiB, real model {memory[1]} GiB")
    if summary.get("skipped_parts"):
        lines.append(f"left out (time budget): {', '.join(summary['skipped_parts'])}")
    lines.append("seconds: " + ", ".join(f"{name} {s}" for name, s in summary["seconds_by_part"].items())
                 + f"; total {summary['seconds']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = _parse(argv)
    versions = {"python": platform.python_version(), **{name: _version(name) for name in PACKAGES}}
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as exc:
        print(f"gpu-check: {exc}; the check needs torch, transformers and accelerate", file=sys.stderr)
        return 1
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu-check: no CUDA device on this machine; nothing to check (run it where a GPU is visible)")
        return 0
    warnings = _out_of_range(versions)
    for warning in warnings:
        print(f"gpu-check: warning: {warning}", file=sys.stderr)
    try:
        from skipsearch.engine.models import dtype_name, resolve_dtype
        from skipsearch.errors import SkipsearchError
        from skipsearch.version import __version__
    except Exception as exc:  # an import error of any kind means the same: this environment cannot run it
        print(f"gpu-check: cannot import skipsearch here ({type(exc).__name__}: {exc}); "
              "run `make gpu-wheels` where there is a network and carry .gpu-wheels/ along", file=sys.stderr)
        return 1

    device = torch.device(args.device)
    try:
        dtype = resolve_dtype(args.dtype, on_cuda=device.type == "cuda")
    except SkipsearchError as exc:
        print(f"gpu-check: {exc}", file=sys.stderr)
        return 2
    summary = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": {**versions, "skipsearch": __version__},
        "version_warnings": warnings,
        "device": str(device),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if device.type == "cuda" else [],
        "config": args.config, "dtype": dtype_name(dtype),
        "budget_seconds": args.budget_seconds,
    }
    parts = Parts(summary, args.budget_seconds)
    if not args.no_tests:
        tests = parts.run("cuda_tests", _run_cuda_tests, args.tests_timeout)
        if tests is not None:
            summary["cuda_tests"] = tests
    try:
        if args.config != "none":
            _random_model(args, parts, summary, dtype, device)
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the random model is gone: its memory goes back for the real one
        if args.model:
            _real_model(args, parts, summary, device)
    except SkipsearchError as exc:
        print(f"gpu-check: {exc}", file=sys.stderr)
        return 2
    summary["seconds"] = round(parts.elapsed, 1)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(_screen(summary))
    print(f"gpu-check: wrote {out}")
    tests = summary.get("cuda_tests", {"exit_code": 0})
    tests_failed = tests.get("ran", True) and tests["exit_code"] != 0  # a timeout leaves no exit code
    bench_errors = any(row["errors"] for row in summary.get("model_bench", {}).get("rows", {}).values())
    return 1 if tests_failed or bench_errors or summary.get("lossless", {}).get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
