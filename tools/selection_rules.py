"""Selection rules for the default search's final skip set, judged on held-out prompts.

    OMP_NUM_THREADS=1 python tools/selection_rules.py studies/humaneval.yaml > reports/selection/humaneval.json

One default-search run per study (`skipsearch compare`'s "skipsearch" method, `DefaultSearch`:
matchness at k = 11, seed 0, 12 held-out prompts); at 60 and at 187 proxy evaluations three rules
pick a set from the same trials — the best mean matchness over the search prompts (the search's
rule), the best lower confidence bound across prompts (mean - 1.28 standard errors), and a paired
test against the better dynamic-programming warm start (take the search's best only where its
per-prompt advantage has a positive lower bound) — and each pick's held-out matchness is printed
beside CLaSp's and KnapSpec's sets, as JSON. Matchness does not depend on timing; KnapSpec's set
can (it weighs blocks by the costs timed at the start).
"""
import json
import math
import statistics
import sys
import time
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from skipsearch.config.studies import apply_overrides, load_study
from skipsearch.engine.skipping import SkipSet
from skipsearch.experiments.compare import DefaultSearch
from skipsearch.search import runner

Z = 1.28  # one-sided 90%, fixed before any run

optuna.logging.set_verbosity(optuna.logging.WARNING)
path = sys.argv[1]
config = apply_overrides(load_study(path), skip_budget=11, heldout_prompts=12, seed=0)
setup = runner.prepare(config, progress=False)
setup.time_costs()
scorer = setup.scorer


def per_prompt(skip):
    return [sum(h for _, h in trace) / len(trace) for trace in scorer.score(skip).trace]


def lcb(values):
    return statistics.mean(values) - Z * statistics.stdev(values) / math.sqrt(len(values))


dp = {name: runner.dp_method(setup, name, setup.k).best for name in ("clasp", "clasp-sublayers", "knapspec")}
scorer.forget()
search = DefaultSearch(setup, seed=0, sampler="tpe")
study = search.study


def picks():
    sets = {SkipSet.from_attrs(t.user_attrs) for t in study.trials if t.value is not None}
    sets = [s for s in sets if len(s) == setup.k]
    by_mean = max(sets, key=lambda s: scorer.score(s).matchness)
    by_lcb = max(sets, key=lambda s: lcb(per_prompt(s)))
    incumbent = max([dp["clasp-sublayers"], dp["knapspec"]], key=lambda s: scorer.score(s).matchness)
    diff = [a - b for a, b in zip(per_prompt(by_mean), per_prompt(incumbent))]
    paired = by_mean if len(set(diff)) > 1 and lcb(diff) > 0 else incumbent
    return {"mean": by_mean, "lcb": by_lcb, "paired-vs-dp": paired}


results = {"study": path, "k": setup.k}
started = time.time()
for budget in (60, 187):
    search.run_to(budget)
    chosen = picks()
    results[budget] = {rule: {"skip": s.describe(), "search": round(scorer.score(s).matchness, 4),
                              "heldout": round(setup.heldout_scorer.score(s).matchness, 4)}
                       for rule, s in chosen.items()}
    results[budget]["evaluations"] = scorer.evaluations
for name, s in dp.items():
    results[name] = {"skip": s.describe(), "search": round(scorer.score(s).matchness, 4),
                     "heldout": round(setup.heldout_scorer.score(s).matchness, 4)}
results["seconds"] = round(time.time() - started)
print(json.dumps(results, indent=1))
