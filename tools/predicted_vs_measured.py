"""Predicted against measured decode speedup on short and long prompts, with the cost model timed
at one context length ("flat") and with its context fit ("per context"), for a study's exported
profile and for KnapSpec's set at its own skip count (layer skip only, as KnapSpec drafts).

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
from skipsearch.engine.costs import best_draft_settings, prompt_costs, replay_drafting
from skipsearch.files import write_atomic
from skipsearch.search import runner

COLUMNS = ("study", "candidate", "skip", "prompt_tokens", "measured", "predicted_per_context", "predicted_flat",
           "per_context_error", "flat_error")


def _flat_prediction(setup, skip_set, drafting, prompts) -> float:
    """The held-out replay's predicted speedup with the costs of the timing context for every prompt."""
    flat = dataclasses.replace(setup.costs, attention_slope=[])
    per_prompt, steps = prompt_costs(flat, skip_set, prompts)
    return replay_drafting(prompts, drafting, len(skip_set) > 0, per_prompt, plain_steps=steps)[1]


def rows_for(study_path: str, heldout: int) -> list[dict]:
    config = apply_overrides(load_study(study_path), heldout_prompts=heldout)
    setup = runner.prepare(config, progress=True)
    setup.time_costs()
    profile_path, _ = output_paths(config)
    candidates = []
    if Path(profile_path).is_file():
        profile = load_profile(profile_path)
        candidates.append(("exported profile", profile.skip, profile.draft))
    knapspec = runner.dp_method(setup, "knapspec", None).best
    candidates.append(("knapspec (own count)", knapspec, None))
    rows = []
    for name, skip_set, draft in candidates:
        search_prompts = setup.scorer.score(skip_set).prompts
        drafting, _, _ = best_draft_settings(setup.costs, skip_set, search_prompts, config.draft.max_draft_tokens,
                                             setup.thresholds)
        if draft is not None:  # the profile's own drafting, as deployed
            drafting = dataclasses.replace(drafting, max_draft_tokens=draft.max_draft_tokens,
                                           confidence_threshold=draft.confidence_threshold)
        measured = runner.measure(setup, skip_set, drafting.max_draft_tokens, drafting.confidence_threshold)
        per_context = measured.predicted_speedup  # the replay with the costs at each prompt's context
        flat = _flat_prediction(setup, skip_set, drafting, setup.heldout_scorer.score(skip_set).prompts)
        tokens = sum(len(r.prompt_ids) for r in setup.heldout_refs) // len(setup.heldout_refs)
        rows.append({"study": config.name, "candidate": name, "skip": skip_set.describe(), "prompt_tokens": tokens,
                     "measured": round(measured.decode_speedup, 3), "predicted_per_context": round(per_context, 3),
                     "predicted_flat": round(flat, 3),
                     "per_context_error": round(per_context / measured.decode_speedup - 1, 3),
                     "flat_error": round(flat / measured.decode_speedup - 1, 3)})
    return rows


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
