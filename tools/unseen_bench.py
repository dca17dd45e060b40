"""The per-category benchmark on prompts no search saw: for each Spec-Bench category, the prompts
after the ones its study used (search and held-out, in the study's seeded order), benched with
`skipsearch bench` in a process of its own per dtype: plain `generate`, transformers' prompt
lookup (N = 3, 5, 10), skipsearch without a profile (the runtime's defaults) and, where the
category's profile exists, the profile as the runtime runs it (and through `custom_generate`).

    python tools/unseen_bench.py --prompts 3 --max-new-tokens 64 --dtypes float32 bfloat16 \\
        --out reports/unseen

A benchmark, not a test: run it with nothing else running. Prints one table (each skipsearch row
against the better of plain generate and the best prompt lookup, as whole calls, over all prompts
and over those where both gave generate's very output: `same_output_ratio`) and writes it as CSV
beside every bench's own CSV and JSON. `--rescan` re-reads the benches' JSON already written and
prints the table again without running anything.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from skipsearch.config.studies import load_study
from skipsearch.files import write_atomic
from skipsearch.search.tasks import load_task, split_prompts

CATEGORIES = ("translation", "summarization", "qa", "math_reasoning", "rag", "coding", "writing")
DATA = "../shared/data/spec_bench/dev.jsonl"
COLUMNS = ("category", "dtype", "prompts", "prompt_source", "generate_tokens_per_s", "best_prompt_lookup",
           "prompt_lookup_speedup", "defaults_speedup", "defaults_vs_best_peer", "profile_speedup",
           "profile_vs_best_peer", "profile_vs_defaults", "custom_generate_vs_best_peer", "errors",
           "same_output_prompts", "defaults_vs_best_peer_same_output", "profile_vs_best_peer_same_output",
           "profile_vs_defaults_same_output", "profile_defaults_same_output_prompts", "no_draft_vs_generate")


def same_output_rates(result: dict, methods: tuple[str, ...]) -> tuple[dict[str, float], int]:
    """(each of `methods`' tokens/s, and generate's, the number of prompts) on the prompts where all
    of `methods` gave generate's very output. A bfloat16 tie flip changes the text decoded, and
    with it how much a draft can copy (prompt lookup, flipped into a short or repetitive answer,
    decodes something easier): speeds are compared on the same text."""
    runs = {(run["method"], run["prompt_id"]): run for run in result["runs"]}
    prompts = [prompt for method, prompt in runs if method == "generate"]
    same = [prompt for prompt in prompts
            if all(runs[(method, prompt)]["divergence"]["kind"] == "identical" for method in methods)]
    if not same:
        return {}, 0

    def rate(method: str) -> float:
        return (sum(len(runs[(method, prompt)]["token_ids"]) for prompt in same)
                / sum(runs[(method, prompt)]["time_s"] for prompt in same))

    return {method: rate(method) for method in ("generate", *methods)}, len(same)


def same_output_ratio(result: dict, name: str, peer: str) -> tuple[float | None, int]:
    """(`name`'s tokens/s over the better of generate's and `peer`'s, the number of prompts) on the
    prompts where both gave generate's very output (`same_output_rates`)."""
    rates, count = same_output_rates(result, (name, peer))
    if not count:
        return None, 0
    return round(rates[name] / max(rates["generate"], rates[peer]), 3), count


def unseen_prompts(category: str, count: int) -> tuple[list[dict], str, str | None]:
    """The first `count` prompts of the category that its study (if any) did not use, where they
    say so, and the study's profile path where it was exported. A category with too few left
    (MT-Bench's have 5) is benched on the study's held-out prompts: the search did not see them,
    but re-scoring chose among its best candidates on them."""
    study_path = Path(f"studies/specbench-{category}-hybrid.yaml")
    task = load_task("specbench", data=DATA, category=category)
    used, seed, profile = 0, 0, None
    if study_path.is_file():
        config = load_study(study_path)
        used, seed = config.task.search_prompts + config.task.heldout_prompts, config.search.seed
        exported = Path("reports") / f"{config.name}.profile.yaml"
        profile = str(exported) if exported.is_file() else None
    _, order = split_prompts(task, 1, len(task.prompts) - 1, seed)  # the study's shuffled order, minus one
    order = order + [p for p in task.prompts if p not in order]
    unseen, source = order[used:used + count], "unused by the study"
    if len(unseen) < count:
        heldout = config.task.heldout_prompts if study_path.is_file() else count
        unseen, source = order[:min(count, heldout)], "the study's held-out (seen by re-scoring)"
    return [{"question_id": p.id, "category": category, "turns": [p.text]} for p in unseen], source, profile


def bench(category: str, dtype: str, prompts: list[dict], source: str, profile: str | None, args, out: Path) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "prompts.jsonl"
        data.write_text("".join(json.dumps(p) + "\n" for p in prompts))
        command = [sys.executable, "-m", "skipsearch", "bench", "--data", str(data), "--category", category,
                   "--prompts", str(len(prompts)), "--max-new-tokens", str(args.max_new_tokens),
                   "--early-exit-layers", "none", "--prompt-lookup-num-tokens", "3,5,10", "--cost-repeats", "0",
                   "--threads", str(args.threads), "--dtype", dtype, "--out-dir", str(out / f"{category}-{dtype}")]
        if profile:
            command += ["--profile", profile]
        run = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if run.returncode not in (0, 1):
        raise SystemExit(f"{category} {dtype}: bench failed: {run.stderr.strip().splitlines()[-1:]}")
    return summarise(category, dtype, len(prompts), source, out)


def summarise(category: str, dtype: str, prompts: int, source: str, out: Path) -> dict:
    """The table's row from the bench's JSON in OUT/<category>-<dtype>/."""
    result = json.loads(next((out / f"{category}-{dtype}").glob("bench-*.json")).read_text())
    rows = {row["method"]: row for row in result["rows"]}
    generate = rows["generate"]
    lookup = next(row for name, row in rows.items() if name.startswith("prompt lookup"))
    best_peer = max(generate["tokens_per_s"], lookup["tokens_per_s"])
    defaults = rows["skipsearch (defaults, no profile)"]
    own = rows.get("skipsearch (profile policy)")
    custom = rows.get("generate custom_generate (profile)")

    def ratio(row, to):
        return round(row["tokens_per_s"] / to, 3) if row else None

    # the table's best prompt lookup, under its own name in the runs
    peer_runs = max((row for row in result["all_rows"] if row["method"].startswith("prompt lookup ")),
                    key=lambda row: row["tokens_per_s"])["method"]
    defaults_same, same_prompts = same_output_ratio(result, defaults["method"], peer_runs)
    profile_same = same_output_ratio(result, own["method"], peer_runs) if own else (None, 0)
    # the profile against the defaults on the prompts both decoded as generate did
    both, both_prompts = same_output_rates(result, (own["method"], defaults["method"])) if own else ({}, 0)

    return {"category": category, "dtype": dtype, "prompts": prompts, "prompt_source": source,
            "generate_tokens_per_s": round(generate["tokens_per_s"], 2), "best_prompt_lookup": lookup["method"],
            "prompt_lookup_speedup": ratio(lookup, generate["tokens_per_s"]),
            "defaults_speedup": ratio(defaults, generate["tokens_per_s"]),
            "defaults_vs_best_peer": ratio(defaults, best_peer),
            "profile_speedup": ratio(own, generate["tokens_per_s"]), "profile_vs_best_peer": ratio(own, best_peer),
            "profile_vs_defaults": ratio(own, defaults["tokens_per_s"]) if own else None,
            "custom_generate_vs_best_peer": ratio(custom, best_peer),
            "errors": sum(row.get("errors") or 0 for row in result["rows"]),
            # where the profile row runs, on the prompts both it and the peer decoded as generate did
            "same_output_prompts": profile_same[1] if own else same_prompts,
            "defaults_vs_best_peer_same_output": defaults_same, "profile_vs_best_peer_same_output": profile_same[0],
            "profile_vs_defaults_same_output": (round(both[own["method"]] / both[defaults["method"]], 3)
                                                if both_prompts else None),
            "profile_defaults_same_output_prompts": both_prompts,
            # skipsearch's decoder with nothing to draft: its overhead against generate
            "no_draft_vs_generate": ratio(rows["skipsearch (no skip)"], generate["tokens_per_s"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--categories", nargs="+", default=list(CATEGORIES))
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="reports/unseen")
    parser.add_argument("--rescan", action="store_true", help="summarise the benches already in --out; run nothing")
    args = parser.parse_args()
    out = Path(args.out)
    rows = []
    print(" | ".join(COLUMNS), flush=True)
    for category in args.categories:
        prompts, source, profile = unseen_prompts(category, args.prompts)
        for dtype in args.dtypes:
            row = (summarise(category, dtype, len(prompts), source, out) if args.rescan
                   else bench(category, dtype, prompts, source, profile, args, out))
            rows.append(row)
            print(" | ".join(str(row[c]) for c in COLUMNS), flush=True)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(out / "unseen-bench.csv", text.getvalue(), what="CSV")
    return 0


if __name__ == "__main__":
    sys.exit(main())
