"""`skipsearch export-hf PROFILE DIR`: a folder that transformers loads as a `custom_generate` method.

DIR gets what transformers' `generate(custom_generate=DIR, trust_remote_code=True)` loads from a
local folder or a Hub repository (`GenerationMixin.load_custom_generate`):

- `custom_generate/generate.py`: the function `generate`, the name transformers looks up, which
  calls `skipsearch.hf.generate_from_export` with the profile embedded as YAML text (transformers
  copies only the module into its cache, so the profile travels inside it);
- `custom_generate/requirements.txt`: skipsearch, which transformers checks is installed;
- `skip_profile.yaml`: the same profile, to read or validate (`skipsearch profile show`);
- `README.md`: a model card with the `custom_generate` tag, the arguments and the profile.

The folder can be pushed to a model repository as it is. An existing non-empty DIR is refused
unless --force, which replaces these four files and keeps every other (so a model's own folder
can carry the method). Every input is checked and every file rendered before anything is
written; files are written atomically, generate.py last, so a failed export never leaves a
loadable half.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from skipsearch.config.profile_summary import summary_lines
from skipsearch.config.profiles import PROFILE_VERSION, Profile, dump_profile, load_profile
from skipsearch.errors import SkipsearchError
from skipsearch.files import write_atomic
from skipsearch.version import __version__

PROFILE_FILE = "skip_profile.yaml"
GENERATE_FILE = "custom_generate/generate.py"  # the path transformers loads
REQUIREMENTS_FILE = "custom_generate/requirements.txt"  # the path transformers checks
README_FILE = "README.md"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export-hf",
        help="write a folder that transformers' generate(custom_generate=DIR) runs with the profile",
        description="Write DIR/custom_generate/generate.py (calling skipsearch with the profile embedded), "
                    f"custom_generate/requirements.txt, {PROFILE_FILE} and a README.md model card tagged "
                    "custom_generate, so model.generate(**inputs, custom_generate=DIR, trust_remote_code=True) "
                    "decodes self-speculatively; DIR can be pushed to a Hub model repository unchanged.",
    )
    parser.add_argument("profile", metavar="PROFILE", help="profile .yaml file")
    parser.add_argument("folder", metavar="DIR", help="folder to write (created if missing)")
    parser.add_argument("--force", action="store_true",
                        help="write into an existing non-empty DIR (replaces the exported files, keeps the rest)")
    parser.set_defaults(func=run)


def _python_string(text: str) -> str:
    """`text` as a Python literal: a readable triple-quoted block where that is exact, else repr."""
    if '"""' not in text and "\\" not in text and not text.endswith('"'):
        return '"""\\\n' + text + '"""'
    return repr(text)


def render_generate(profile_text: str, source: str) -> str:
    return f'''"""Self-speculative decoding with a skipsearch profile, as a transformers `custom_generate` method.

Written by `skipsearch export-hf` (skipsearch {__version__}) from {source}.
transformers calls `generate` below with the arguments of `generate` itself; it runs `generate`
again with `skipsearch.hf.self_speculative` and the profile below (pass skip_profile=... to use
another). See README.md for the arguments.
"""

from skipsearch.hf import generate_from_export

PROFILE_YAML = {_python_string(profile_text)}


def generate(model, *args, **kwargs):
    return generate_from_export(model, PROFILE_YAML, *args, **kwargs)
'''


def render_requirements() -> str:
    return f"skipsearch>={__version__}\n"


def render_readme(profile: Profile, folder: str) -> str:
    model = profile.model
    base = f"base_model: {model.name}\n" if "/" in model.name and not Path(model.name).exists() else ""
    summary = "\n".join(summary_lines(profile, PROFILE_FILE))
    return f"""---
library_name: transformers
tags:
  - custom_generate
  - skipsearch
  - speculative-decoding
{base}---

# Self-speculative decoding: {model.name}, {profile.task}

A [transformers `custom_generate`](https://huggingface.co/docs/transformers/generation_strategies) method
written by `skipsearch export-hf` (skipsearch {__version__}). The model drafts for itself with some
sublayers skipped (and, if the profile says so, from the context's n-grams), and the full model
verifies every draft in one pass: greedy output is the full model's, token for token in float32;
sampled output follows the full model's (processed) distribution.

The profile is only used with the weights it was made for ({model.architecture}, {model.num_hidden_layers}
layers, fingerprint `{model.fingerprint[:23]}…`); with other weights the call fails with one error line.

## Usage

```python
out = model.generate(**inputs, max_new_tokens=64, custom_generate="{folder}", trust_remote_code=True)
```

`custom_generate` takes this folder or the Hub repository it was pushed to. It needs
`pip install skipsearch` (`custom_generate/requirements.txt`; transformers checks it).

## Arguments

Beside `generate`'s own (`max_new_tokens`/`max_length`, `eos_token_id`, `do_sample`, `temperature`,
`top_k`, `top_p`, `repetition_penalty`, `bad_words_ids`, `stopping_criteria`, `logits_processor`,
`streamer`, `return_dict_in_generate`, `output_scores`, `output_logits`, ...):

| argument | default | meaning |
|---|---|---|
| `skip_profile` | `{PROFILE_FILE}` (embedded in `custom_generate/generate.py`) | \
another profile: a path or a loaded `skipsearch.Profile` |
| `max_draft_tokens` | the profile's ({profile.draft.max_draft_tokens}) | most tokens one layer-skip draft proposes |
| `confidence_threshold` | the profile's ({profile.draft.confidence_threshold:g}) | \
stop a layer-skip draft below this top-1 probability |
| `fallback` | `True` | suspend drafting for a while whenever it is slower than plain steps by the clock |
| `plain` | `False` | draft nothing |
| `policy_costs` | `"here"` | what the runtime decides with: this device's costs, or `"profile"`: the stored ones |
| `policy_memory` | one per model and profile | \
a `skipsearch.PolicyMemory` carrying what the runtime learned across calls |
| `skip_stats` | none | a `skipsearch.DecodeStats` filled with the call's rounds, acceptance and times |

Not supported (each one error line): batches of more than one sequence, padding, beam search,
classifier-free guidance, `output_attentions` / `output_hidden_states`.

## The profile

```
{summary}
```
"""


def export_hf(profile_path: str, folder: str, force: bool = False) -> list[Path]:
    """Write the folder; returns the files written. Raises SkipsearchError before writing anything
    when an input is bad."""
    profile = load_profile(profile_path)
    profile_text = dump_profile(profile)
    target = Path(folder)
    if target.exists() and not target.is_dir():
        raise SkipsearchError(f"{folder} exists and is not a folder; give a folder path to export into")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise SkipsearchError(f"{folder} is not empty; choose a new folder, or pass --force to write the export "
                              "into it (replaces the exported files, keeps every other)")
    files = {
        REQUIREMENTS_FILE: render_requirements(),
        PROFILE_FILE: profile_text,
        # the summary of what was written: always version 2
        README_FILE: render_readme(dataclasses.replace(profile, skipsearch_profile=PROFILE_VERSION), folder),
        GENERATE_FILE: render_generate(profile_text, Path(profile_path).name),  # last: loadable only when complete
    }
    for name in files:
        path = target / name
        if path.exists() and not path.is_file():
            raise SkipsearchError(f"{path} exists and is not a file; remove it or choose another folder")
        if path.parent.exists() and not path.parent.is_dir():
            raise SkipsearchError(f"{path.parent} exists and is not a folder; remove it or choose another folder")
    try:
        (target / GENERATE_FILE).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SkipsearchError(f"cannot create folder {(target / GENERATE_FILE).parent}: "
                              f"{exc.strerror or exc}") from None
    written = []
    for name, text in files.items():
        write_atomic(target / name, text)
        written.append(target / name)
    return written


def run(args) -> int:
    written = export_hf(args.profile, args.folder, force=args.force)
    print(f"wrote {', '.join(str(p) for p in written)}")
    print(f"use: model.generate(**inputs, custom_generate={args.folder!r}, trust_remote_code=True)")
    return 0
