"""Exploration charged before (a per-round allowance, spent by what the posterior means said a
Thompson choice gave up, a fresh one every call; `OldPolicy` below, the rule at commit 3a03cfb)
and after (time lost, charged by what the round realized, the allowance carried across calls),
interleaved per prompt in one process, with each category profile's policy and with the defaults
(no profile). The prompts are the 5 after the unseen bench's 8 in each category (coding and
writing, which have no prompts left: their 3 held-out ones). In bfloat16 the two rules can decode
different text (a tie flipped by a different draft length), so each ratio is given on all prompts
and on those where both gave the same output. A one-off A/B, from the repository root:
    python reports/explore-ab/explore_ab.py float32; python reports/explore-ab/explore_ab.py bfloat16"""
import sys, time, dataclasses, random, statistics
sys.path[:0] = [".", "tools"]
import torch
torch.set_num_threads(2)
from skipsearch.engine import decoding
from skipsearch.engine.drafting import PLAIN, Choice, DraftPolicy, PolicyMemory
from skipsearch.engine.models import load_model
from skipsearch.engine.skipping import SkipSet
from skipsearch.config.profiles import load_profile, decode_settings_for
from skipsearch.search.tasks import format_prompt
from unseen_bench import unseen_prompts, CATEGORIES


class OldPolicy(DraftPolicy):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.explore_allowance = 1.0

    def choose(self, budget, proposal=(), match=0):
        if self.costs is None or self.rng is None:
            return super().choose(budget, proposal, match)
        limit = min(budget, self.costs.max_verified - 1)
        if limit < 1:
            return Choice(PLAIN)
        ngram_belief = self.ngram_beliefs.get(match) if proposal else None
        ngram_length = min(len(proposal), limit)
        skip_length = min(self.max_draft_tokens, limit) if self.layer_skip else 0
        means = (ngram_belief.mean(ngram_length) if ngram_belief else [],
                 self.layer_skip_belief.mean(skip_length) if skip_length else [])
        by_means = self._best_option(proposal, match, limit, *means)
        draws = (ngram_belief.sample(self.rng, ngram_length) if ngram_belief else [],
                 self.layer_skip_belief.sample(self.rng, skip_length) if skip_length else [])
        sampled = self._best_option(proposal, match, limit, *draws)
        self.explore_allowance += self.settings.explore_cost
        tokens, cost = self._expected(sampled, *means)
        given_up = max(0.0, 1.0 - tokens / cost / by_means.rate)
        if given_up <= self.explore_allowance:
            self.explore_allowance -= given_up
            return sampled
        return by_means

    def record(self, choice, drafted, accepted, draft_steps=0):
        self.exploring = None
        rng, self.rng = self.rng, None  # no charging
        super().record(choice, drafted, accepted, draft_steps)
        self.rng = rng


dtype = sys.argv[1]
loaded = load_model(dtype=dtype)
model, tok = loaded.model, loaded.tokenizer
policies = {"old": OldPolicy, "new": DraftPolicy}
total = {}
for cat in CATEGORIES:
    prompts, source, profile_path = unseen_prompts(cat, 13)
    prompts = prompts[8:] if source == "unused by the study" else prompts
    profile = load_profile(profile_path)
    variants = {}
    for g in policies:
        variants[("profile", g)] = (profile.skip, decode_settings_for(profile, max_new_tokens=64), PolicyMemory())
        variants[("defaults", g)] = (SkipSet(), decoding.DecodeSettings(max_new_tokens=64), PolicyMemory())
    ids = [format_prompt(tok, p["turns"][0]) for p in prompts]
    for (kind, g), (skip, settings, mem) in variants.items():  # warm up: costs resolved and cached, kernels
        decoding.DraftPolicy = policies[g]
        decoding.decode(model, ids[0], skip, dataclasses.replace(settings, max_new_tokens=8), memory=mem)
        mem.forget()
    res = {k: [0.0, 0, 0] for k in variants}
    per_prompt = {k: [] for k in variants}  # (seconds, tokens) by prompt
    for i, p in enumerate(ids):
        order = list(variants)
        random.Random(i).shuffle(order)
        for key in order:
            skip, settings, mem = variants[key]
            decoding.DraftPolicy = policies[key[1]]
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
