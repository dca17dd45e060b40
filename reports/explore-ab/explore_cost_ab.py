"""explore_cost 0.03 ("old") against 0.02 ("new"), both with exploring charged by realized loss,
interleaved per prompt in one process on the prompts of explore_ab.py, with each category
profile's policy and with the defaults. From the repository root:
    python reports/explore-ab/explore_cost_ab.py float32; python reports/explore-ab/explore_cost_ab.py bfloat16"""
import sys, time, dataclasses, random, statistics
sys.path[:0] = [".", "tools"]
import torch
torch.set_num_threads(2)
from skipsearch.engine import decoding
from skipsearch.engine.drafting import PolicyMemory
from skipsearch.engine.models import load_model
from skipsearch.engine.skipping import SkipSet
from skipsearch.config.profiles import load_profile, decode_settings_for
from skipsearch.search.tasks import format_prompt
from unseen_bench import unseen_prompts, CATEGORIES

dtype = sys.argv[1]
loaded = load_model(dtype=dtype)
model, tok = loaded.model, loaded.tokenizer
costs_ab = {"old": 0.03, "new": 0.02}
total = {}
for cat in CATEGORIES:
    prompts, source, profile_path = unseen_prompts(cat, 13)
    prompts = prompts[8:] if source == "unused by the study" else prompts
    profile = load_profile(profile_path)
    variants = {}
    def with_cost(settings, g):
        return dataclasses.replace(settings, policy=dataclasses.replace(settings.policy, explore_cost=costs_ab[g]))
    for g in costs_ab:
        variants[("profile", g)] = (profile.skip, with_cost(decode_settings_for(profile, max_new_tokens=64), g), PolicyMemory())
        variants[("defaults", g)] = (SkipSet(), with_cost(decoding.DecodeSettings(max_new_tokens=64), g), PolicyMemory())
    ids = [format_prompt(tok, p["turns"][0]) for p in prompts]
    for (kind, g), (skip, settings, mem) in variants.items():  # warm up: costs resolved and cached, kernels
        decoding.decode(model, ids[0], skip, dataclasses.replace(settings, max_new_tokens=8), memory=mem)
        mem.forget()
    res = {k: [0.0, 0, 0] for k in variants}
    per_prompt = {k: [] for k in variants}  # (seconds, tokens) by prompt
    for i, p in enumerate(ids):
        order = list(variants)
        random.Random(i).shuffle(order)
        for key in order:
            skip, settings, mem = variants[key]
            t = time.perf_counter()
            r = decoding.decode(model, p, skip, settings, memory=mem)
            seconds = time.perf_counter() - t
            per_prompt[key].append((seconds, tuple(r.token_ids)))
            res[key][0] += seconds
            res[key][1] += len(r.token_ids)
            res[key][2] += r.stats.rounds
    for kind in ("profile", "defaults"):
        o, n = res[(kind, "old")], res[(kind, "new")]
        ratio = (n[1] / n[0]) / (o[1] / o[0])
        total.setdefault(kind, []).append(ratio)
        same = [(a, b) for a, b in zip(per_prompt[(kind, "old")], per_prompt[(kind, "new")]) if a[1] == b[1]]
        same_ratio = (sum(a[0] for a, _ in same) / sum(b[0] for _, b in same)) if same else None
        if same_ratio is not None:
            total.setdefault(kind + " same output", []).append(same_ratio)
        print(f"{dtype} {cat:15s} {kind:9s} new/old tokens/s {ratio:.3f}, on the same output "
              f"{'-' if same_ratio is None else f'{same_ratio:.3f}'} ({len(same)} of {len(ids)} prompts)  "
              f"drafting rounds old {o[2]} new {n[2]}  tok/s old {o[1] / o[0]:.1f} new {n[1] / n[0]:.1f}", flush=True)
for kind, r in total.items():
    print(f"{dtype} geomean {kind}: {statistics.geometric_mean(r):.3f}")
