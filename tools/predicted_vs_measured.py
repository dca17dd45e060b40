"""Predicted against measured decode speedup on short and long prompts, with the cost model timed
at one context length ("flat") and with its context fit ("per context"), for a study's exported
profile and for KnapSpec's set at its own skip count, each run as the runtime runs a profile
(n-gram drafts and the policy's choice each round, with the priors the search measured).

    python tools/predicted_vs_measured.py studies/humaneval.yaml studies/specbench-summarization.yaml \
        --heldout-prompts 12 --out reports/dp/predicted-vs-measured.csv

Decodes every held-out prompt plainly and with each drafting policy, interleaved (runner.measure),
on this machine: run it with nothing else running. Prints one table and writes it as CSV.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import sys
from pathlib import Path

from skipsearch.config.profiles import load_profile
from skipsearch.config.studies import apply_overrides, load_study, output_paths
from skipsearch.engine.replay import prompt_costs, replay_drafting
from skipsearch.files import write_atomic
from skipsearch.search import runner
from skipsearch.search.draft_grid import best_draft_settings

COLUMNS = ("study", "candidate", "skip", "drafting", "prompt_tokens", "measured", "predicted_per_context",
           "predicted_flat", "per_context_error", "flat_error")


def _flat_prediction(setup, skip_set, candidate, prompts) -> float:
    """The held-out replay's predicted speedup with the costs of the timing context for every prompt."""
    flat = dataclasses.replace(setup.costs, attention_slope=[])
    drafting = runner.drafting_settings(setup, flat, skip_set, *candidate,
                                        priors=runner.search_priors(setup, skip_set, *candidate))
    per_prompt, steps = prompt_costs(flat, skip_set, prompts)
    return replay_drafting(prompts, drafting, len(skip_set) > 0, per_prompt, plain_steps=steps)[1]


def _searched(setup, skip_set) -> tuple:
    """The draft settings the search would give `skip_set`, chosen on the search prompts:
    (max draft tokens, confidence threshold)."""
    settings, _, _ = best_draft_settings(setup.costs, skip_set, setup.scorer.score(skip_set).prompts,
                                         setup.config.draft.max_draft_tokens, setup.thresholds, policies=True)
    return settings.max_draft_tokens, settings.confidence_threshold


def rows_for(study_path: str, heldout: int) -> list[dict]:
    config = apply_overrides(load_study(study_path), heldout_prompts=heldout)
    setup = runner.prepare(config, progress=True)
    setup.time_costs()
    profile_path, _ = output_paths(config)
    candidates = []
    if Path(profile_path).is_file():
        profile = load_profile(profile_path)
        draft = profile.draft
        candidates.append(("exported profile", profile.skip, (draft.max_draft_tokens, draft.confidence_threshold)))
    knapspec = runner.dp_method(setup, "knapspec", None).best
    candidates.append(("knapspec (own count)", knapspec, _searched(setup, knapspec)))
    rows = []
    for name, skip_set, candidate in candidates:
        measured = runner.measure(setup, skip_set, *candidate)
        per_context = measured.predicted_speedup  # the replay with the costs at each prompt's context
        flat = _flat_prediction(setup, skip_set, candidate, setup.heldout_scorer.score(skip_set).prompts)
        tokens = sum(len(r.prompt_ids) for r in setup.heldout_refs) // len(setup.heldout_refs)
        rows.append({"study": config.name, "candidate": name, "skip": skip_set.describe(),
                     "drafting": _drafting(candidate), "prompt_tokens": tokens,
                     "measured": round(measured.decode_speedup, 3), "predicted_per_context": round(per_context, 3),
                     "predicted_flat": round(flat, 3),
                     "per_context_error": round(per_context / measured.decode_speedup - 1, 3),
                     "flat_error": round(flat / measured.decode_speedup - 1, 3)})
    return rows


def _drafting(candidate) -> str:
    max_draft, threshold = candidate
    return f"{max_draft} drafts, threshold {threshold}, the runtime's n-grams and policy"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("studies", nargs="+")
    parser.add_argument("--heldout-prompts", type=int, default=12)
    parser.add_argument("--out", default="reports/dp/predicted-vs-measured.csv")
    args = parser.parse_args()
    rows = [row for study in args.studies for row in rows_for(study, args.heldout_prompts)]
    print(" | ".join(COLUMNS))
    for row in rows:
        print(" | ".join(str(row[c]) for c in COLUMNS))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(args.out, text.getvalue(), what="CSV")
    return 0


if __name__ == "__main__":
    sys.exit(main())
