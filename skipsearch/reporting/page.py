"""The report page: finished studies and the files beside them (exported profiles, comparison
tables) gathered into `data.ReportData`, drawn by `figures`, laid out as one self-contained HTML
page that embeds plotly.js once and loads nothing from the network, and written to disk.

All of reporting's I/O is here: opening studies, reading the files, writing the page (atomically,
`files.write_atomic`). Every string that comes from a study, a config or a profile is escaped
before it reaches the page.
"""

from __future__ import annotations

import csv
import html
import os
import shlex
from pathlib import Path
from typing import Any

import optuna

from skipsearch.config.studies import StudyConfig, default_storage_url
from skipsearch.errors import SkipsearchError, first_line
from skipsearch.experiments.transfer import profile_path
from skipsearch.files import write_atomic
from skipsearch.reporting.data import ReportData, gather_report_data, profile_mapping
from skipsearch.reporting.figures import build_figures
from skipsearch.search.storages import open_storage, redact, storage_file


def open_finished_study(config: StudyConfig, storage: str) -> optuna.Study:
    """Load an existing study from any storage without creating anything; a missing one is one clear line."""
    missing = SkipsearchError(f"no study {config.name} in {redact(storage)}; run skipsearch search STUDY.yaml first")
    path = storage_file(storage)
    if path is not None and not path.is_file():
        raise missing  # opening would create an empty database or journal file
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    backend = open_storage(storage)
    try:
        return optuna.load_study(study_name=config.name, storage=backend)
    except KeyError:
        raise missing from None
    except Exception as exc:  # SQLAlchemy, psycopg and file errors all mean the same to the user
        raise SkipsearchError(f"no study {config.name} in {redact(storage)} ({first_line(exc)}); "
                              "run skipsearch search STUDY.yaml first") from None


def compare_csv_path(study_name: str) -> Path:
    """Where `skipsearch compare` writes its table for a study (relative to the current directory)."""
    return Path("reports") / f"compare-{study_name}.csv"


def read_compare_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a table `skipsearch compare` wrote, as text."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return [dict(row) for row in csv.DictReader(handle)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SkipsearchError(f"cannot read the comparison table {path}: {exc}") from exc


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8") if path.is_file() else None
    except (OSError, UnicodeDecodeError):
        return None


def _search_command(study_path, profile_text: str | None, storage: str | None) -> str:
    """The search command recorded in the profile, else the plain one for the study file."""
    provenance = (profile_mapping(profile_text).get("provenance") or {}) if profile_text else {}
    if isinstance(provenance, dict) and isinstance(provenance.get("command"), str):
        return provenance["command"]
    return "skipsearch " + shlex.join(["search", str(study_path)] + (["--storage", redact(storage)] if storage else []))


def build_page(studies: list[tuple[optuna.Study, StudyConfig, str | Path]], commands: list[str],
               explicit_storage: str | None = None, search_commands: list[str] | None = None) -> str:
    """The report page for (study, config, study file) triples.

    The commands shown are each study's search command (given, else the one its profile
    recorded, else the plain one), then `commands`."""
    texts, compare, searches = {}, [], []
    for i, (study, config, study_path) in enumerate(studies):
        text = _read(profile_path(study, config))
        if text is not None:
            texts[config.name] = text
        searches.append(search_commands[i] if search_commands else _search_command(study_path, text, explicit_storage))
        csv_path = compare_csv_path(config.name)
        if csv_path.is_file():
            rows = read_compare_csv(csv_path)
            compare += [{"study": config.name, **row} for row in rows] if len(studies) > 1 else rows
    data = gather_report_data([s for s, _, _ in studies], texts, searches + commands,
                              compare, configs={c.name: c for _, c, _ in studies})
    return render_report(data, build_figures(data))


def write_study_report(study: optuna.Study, config: StudyConfig, study_path: str | Path, storage: str,
                       path: str | Path, command: str) -> Path:
    """Write the report of one study; for `skipsearch search` to call when it finishes.

    `command` is the search command that just ran (shown as the one to reproduce), followed by
    the `skipsearch report` command that rewrites this page later."""
    custom = storage != default_storage_url(config, study_path)
    again = ["report", str(study_path), "-o", str(path)] + (["--storage", redact(storage)] if custom else [])
    page = build_page([(study, config, study_path)], ["skipsearch " + shlex.join(again)],
                      search_commands=[command])
    return write_report(path, page)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: .2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0; font-size: 90%; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; }
th { background: #f3f3f3; } pre { background: #f6f8fa; padding: .8em; overflow-x: auto; }
.figure { margin: 1em 0; } .note { color: #8a5300; }
"""


def _table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    if columns is None:
        columns = []
        for row in rows:
            columns += [c for c in row if c not in columns]
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(row.get(c))}</td>" for c in columns) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def render_report(data: ReportData, figures: list) -> str:
    """One HTML page, plotly.js inline once, no network URL; all data-derived text escaped."""
    from plotly.offline import get_plotlyjs

    names = ", ".join(s.name for s in data.studies)
    models = sorted({s.model for s in data.studies if s.model})
    tasks = sorted({s.task for s in data.studies if s.task})
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>skipsearch report: {html.escape(names)}</title>", f"<style>{_CSS}</style>",
        f'<script type="text/javascript" id="plotlyjs">{get_plotlyjs()}</script>', "</head><body>",
        f"<h1>skipsearch report: {html.escape(names)}</h1>",
        f"<p>model: <b>{html.escape(', '.join(models) or 'unknown')}</b> &middot; "
        f"task: <b>{html.escape(', '.join(tasks) or 'unknown')}</b></p>",
        _table([{"study": s.name, "model": s.model, "task": s.task, "objective": s.objective, "sampler": s.sampler,
                 "finished trials": s.trials, "skip budget": s.skip_budget, "device": s.device, "dtype": s.dtype}
                for s in data.studies]),
    ]
    parts += [f'<p class="note">{html.escape(note)}</p>' for note in data.notes]
    for i, (title, figure) in enumerate(figures):
        parts.append(f"<h2>{html.escape(title)}</h2>")
        div = figure.to_html(full_html=False, include_plotlyjs=False, div_id=f"figure-{i}",
                             config={"displaylogo": False, "responsive": True})
        parts.append(f'<div class="figure">{div}</div>')
    if data.rescored:
        parts.append("<h2>Re-scored candidates (held-out prompts, real decoder)</h2>")
        parts.append(_table([{"study": r.study, "rank": r.rank + 1, "trial": r.trial, "skip": r.skip,
                              "matchness": r.matchness, "predicted acceptance": r.predicted_acceptance,
                              "acceptance": r.acceptance_rate, "mean accepted tokens": r.mean_accepted_tokens,
                              "predicted on search prompts": r.search_predicted_speedup,
                              "predicted on held-out": r.predicted_speedup,
                              "measured decode speedup": r.decode_speedup,
                              "identical / tie flips / errors": r.lossless,
                              "rounds n-gram / layer-skip / both / plain": r.rounds}
                             for r in data.rescored]))
    if data.compare_rows:
        parts.append("<h2>Comparison of search methods</h2>")
        parts.append(_table(data.compare_rows))
    for name, text in data.profiles.items():
        parts.append(f"<h2>Exported profile: {html.escape(name)}</h2><pre>{html.escape(text)}</pre>")
    if data.commands:
        parts.append("<h2>Commands to reproduce</h2>")
        parts.append(f"<pre>{html.escape(chr(10).join(data.commands))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: str | os.PathLike, text: str) -> Path:
    """Replace `path` atomically (readers see the old page or the new one); its folder must exist."""
    return write_atomic(path, text, what="report")
