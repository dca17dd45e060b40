"""The GPU check: the tests marked `cuda`, then the engine timed on a model of a real size.

Run it as `make gpu-check` (or `python tools/gpu_check.py`) from the source tree on a machine
with CUDA. It needs torch, transformers and accelerate only (pytest for the tests part: where
it is missing, `make gpu-wheels` here downloads it into .gpu-wheels/ to carry along). No
weights are downloaded: the model is randomly initialised from a config of a real shape
(Llama-3.1-8B's by default, in the dtype `auto` picks), which is all that timing needs:

- the cost model: per-block costs and the verify-length curve, timed with CUDA events;
- the decoder's own overhead: plain decoding against transformers `generate`, interleaved;
- the predicted speedup of an evenly spaced skip set at a few assumed acceptance rates;
- the lossless check in reduced precision: drafted against plain outputs, classified.

With several GPUs visible the model is sharded over them (a balanced device map) and the cost
model is timed per GPU. One JSON summary is written (default reports/gpu-check.json). On a
machine without CUDA it says so in one line and exits 0.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
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


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "reports" / "gpu-check.json"), help="the JSON summary to write")
    parser.add_argument("--config", choices=list(CONFIGS), default="llama-3.1-8b", help="model shapes to build")
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu for a dry run of the timing part")
    parser.add_argument("--dtype", default="auto", help="auto (bfloat16 where the GPU supports it), bfloat16, ...")
    parser.add_argument("--context", type=int, default=512, help="prompt tokens for the timings (default 512)")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens per decoding call (default 128)")
    parser.add_argument("--no-tests", action="store_true", help="leave out the tests marked cuda")
    return parser.parse_args(argv)


def _run_cuda_tests() -> dict:
    try:
        import pytest  # noqa: F401
    except ImportError:
        return {"ran": False, "why": "pytest is not installed: run `make gpu-wheels` where there is a network and "
                                      "carry .gpu-wheels/ along"}
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-m", "cuda", "-p", "no:cacheprovider",
               str(ROOT / "tests" / "test_cuda.py")]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    lines = (done.stdout + done.stderr).strip().splitlines()
    print("\n".join(lines[-15:]))
    return {"ran": True, "exit_code": done.returncode, "summary": lines[-1] if lines else "",
            "seconds": round(time.perf_counter() - started, 1)}


def _build(config_name: str, dtype, device):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**CONFIGS[config_name])
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    model.eval().requires_grad_(False)
    model.generation_config.eos_token_id = None  # random weights: decode the full length every time
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
    with torch.inference_mode():
        for _ in range(repeats + 1):  # the first round warms up
            with Stopwatch(devices, events=False) as watch:
                model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                               max_new_tokens=new_tokens, min_new_tokens=new_tokens)
            times["generate"].append(watch.seconds)
            with Stopwatch(devices, events=False) as watch:
                decode(model, prompt, None, settings)
            times["skipsearch"].append(watch.seconds)
    median = {name: statistics.median(values[1:]) for name, values in times.items()}
    return {"new_tokens": new_tokens,
            "generate_tokens_per_s": round(new_tokens / median["generate"], 2),
            "skipsearch_tokens_per_s": round(new_tokens / median["skipsearch"], 2),
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


def main(argv=None) -> int:
    args = _parse(argv)
    import torch
    import transformers

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu-check: no CUDA device on this machine; nothing to check (run it where a GPU is visible)")
        return 0
    from skipsearch.engine.costs import layer_groups, measure_costs
    from skipsearch.engine.models import dtype_name, resolve_dtype
    from skipsearch.engine.skipping import SkipSet

    device = torch.device(args.device)
    dtype = resolve_dtype(args.dtype, on_cuda=device.type == "cuda")
    summary = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if device.type == "cuda" else [],
        "config": args.config, "dtype": dtype_name(dtype),
    }
    started = time.perf_counter()
    if not args.no_tests:
        summary["cuda_tests"] = _run_cuda_tests()

    model = _build(args.config, dtype, device)
    summary["build_seconds"] = round(time.perf_counter() - started, 1)
    summary["layer_groups"] = [list(group) for group in layer_groups(model)]
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, vocab, (args.context,), generator=generator).tolist() for _ in range(3)]

    costs = measure_costs(model, context_tokens=args.context, max_verify_tokens=17, repeats=5)
    plain = costs.plain_step
    summary["costs"] = {
        "device": costs.device, "context_tokens": costs.context_tokens,
        "plain_step_ms": round(plain * 1000, 3),
        "attention_block_ms": [round(c * 1000, 4) for c in costs.attention],
        "mlp_block_ms": [round(c * 1000, 4) for c in costs.mlp],
        "fixed_ms": round(costs.fixed * 1000, 3),
        "verify_over_plain_step": [round(v / plain, 3) for v in costs.verify],
    }
    summary["decoder_overhead"] = _decoder_overhead(model, prompts[0], args.new_tokens)
    layers = model.config.num_hidden_layers
    # about 3/8 of the sublayers, spread out: the kind of set a search finds on a 7B-70B model
    skip_set = SkipSet(attention=tuple(range(1, layers - 1, 2)), mlp=tuple(range(3, layers - 1, 4)))
    summary["predicted_speedup"] = {
        "skip_set": skip_set.describe(),
        "by_acceptance": {str(rate): _best_length(costs, skip_set, rate) for rate in ACCEPTANCE_RATES},
    }
    summary["lossless"] = {"dtype": dtype_name(dtype), "skip_set": skip_set.describe(),
                           **_lossless(model, prompts, skip_set, min(args.new_tokens, 64))}
    summary["seconds"] = round(time.perf_counter() - started, 1)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"gpu-check: wrote {out}")
    return 1 if summary.get("cuda_tests", {}).get("exit_code") else 0


if __name__ == "__main__":
    sys.exit(main())
