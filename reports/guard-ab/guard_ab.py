"""The throughput guard before (rates compared; the class at commit 3aa1faf, copied in oldguard.py)
and after (a one-sided test), interleaved per prompt in one process, on the unseen bench's prompts
(5 a category), with each category profile's policy and with the defaults (no profile). A one-off
A/B, run from the repository root:
    python reports/guard-ab/guard_ab.py float32; python reports/guard-ab/guard_ab.py bfloat16"""
import sys, time, dataclasses, random
sys.path[:0] = [".", "tools", "reports/guard-ab"]
import torch
torch.set_num_threads(2)
from oldguard import OldGuard
from skipsearch.engine import decoding
from skipsearch.engine.drafting import ThroughputGuard, PolicyMemory
from skipsearch.engine.models import load_model
from skipsearch.engine.skipping import SkipSet
from skipsearch.config.profiles import load_profile, decode_settings_for
from skipsearch.search.tasks import format_prompt
from unseen_bench import unseen_prompts, CATEGORIES

dtype = sys.argv[1]
loaded = load_model(dtype=dtype)
model, tok = loaded.model, loaded.tokenizer
guards = {"old": OldGuard, "new": ThroughputGuard}
total = {}
for cat in CATEGORIES:
    prompts, source, profile_path = unseen_prompts(cat, 5)
    profile = load_profile(profile_path)
    variants = {}
    for g in guards:
        variants[("profile", g)] = (profile.skip, decode_settings_for(profile, max_new_tokens=64), PolicyMemory())
        variants[("defaults", g)] = (SkipSet(), decoding.DecodeSettings(max_new_tokens=64), PolicyMemory())
    ids = [format_prompt(tok, p["turns"][0]) for p in prompts]
    # warm up (costs resolved and cached, kernels)
    for (kind, g), (skip, settings, mem) in variants.items():
        decoding.ThroughputGuard = guards[g]
        decoding.decode(model, ids[0], skip, dataclasses.replace(settings, max_new_tokens=8), memory=mem)
        mem.forget()
    res = {k: [0.0, 0, 0] for k in variants}
    for i, p in enumerate(ids):
        order = list(variants)
        random.Random(i).shuffle(order)
        for key in order:
            skip, settings, mem = variants[key]
            decoding.ThroughputGuard = guards[key[1]]
            t = time.perf_counter()
            r = decoding.decode(model, p, skip, settings, memory=mem)
            dt = time.perf_counter() - t
            res[key][0] += dt; res[key][1] += len(r.token_ids); res[key][2] += bool(r.stats.fell_back)
    for kind in ("profile", "defaults"):
        o, n = res[(kind, "old")], res[(kind, "new")]
        ratio = (n[1] / n[0]) / (o[1] / o[0])
        total.setdefault(kind, []).append(ratio)
        print(f"{dtype} {cat:15s} {kind:9s} new/old tokens/s {ratio:.3f}  suspended calls old {o[2]}/5 new {n[2]}/5  tok/s old {o[1]/o[0]:.1f} new {n[1]/n[0]:.1f}", flush=True)
import statistics
for kind, r in total.items():
    print(f"{dtype} geomean {kind}: {statistics.geometric_mean(r):.3f}")
