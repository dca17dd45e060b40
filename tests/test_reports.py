"""Reports: data gathered from in-memory studies (one per objective), the page's escaping and
offline-ness, atomic writing and the `report` command. The browser check is in
test_report_browser.py; `make_study` is shared with it."""

from __future__ import annotations

import html
import math
import random
import re

import optuna
import pytest
from optuna.distributions import FloatDistribution

from skipsearch.cli import main
from skipsearch.errors import SkipsearchError
from skipsearch.reporting import data as reports
from skipsearch.reporting.figures import build_figures
from skipsearch.reporting.page import render_report, write_report, write_study_report

optuna.logging.set_verbosity(optuna.logging.WARNING)

XSS = "<script>alert(1)</script>"


def make_study(objective: str = "speedup", name: str = "demo", n_trials: int = 30, num_layers: int = 8,
               seed: int = 0, task: str = "humaneval", storage=None, transfer: bool = False,
               density: float = 0.5) -> optuna.Study:
    """A study shaped like `skipsearch search` leaves it, with a made-up model: layer l's sublayers
    cost matchness in proportion to their importance, so good trials skip the unimportant ones.
    With a free count each sublayer is skipped with probability `density`."""
    rng = random.Random(seed)
    directions = ["minimize", "maximize"] if objective == "pareto" else ["maximize"]
    study = optuna.create_study(study_name=name, storage=storage or optuna.storages.InMemoryStorage(),
                                directions=directions)
    eligible = [(kind, layer) for layer in range(1, num_layers - 1) for kind in ("attention", "mlp")]
    harm = {s: (0.004 if s[0] == "attention" else 0.012) * (1 + (s[1] % 3)) for s in eligible}
    attn_cost, mlp_cost, fixed = [0.43e-3] * num_layers, [0.60e-3] * num_layers, 5.9e-3
    plain = fixed + sum(attn_cost) + sum(mlp_cost)
    k = max(1, int(0.2 * len(eligible)))
    for number in range(n_trials):
        exponent = math.log(0.5) / math.log(1 - density)  # P(u ** exponent > 0.5) = density
        params = {f"{kind}.{layer}": rng.random() ** exponent for kind, layer in eligible}
        if objective == "matchness":
            chosen = sorted(eligible, key=lambda s: -params[f"{s[0]}.{s[1]}"])[:k]
        else:
            chosen = [s for s in eligible if params[f"{s[0]}.{s[1]}"] > 0.5]
        attention = sorted(layer for kind, layer in chosen if kind == "attention")
        mlp = sorted(layer for kind, layer in chosen if kind == "mlp")
        matchness = max(0.05, 1.0 - sum(harm[s] for s in chosen) - 0.02 * rng.random())
        cost = (fixed + sum(attn_cost) - sum(attn_cost[layer] for layer in attention) + sum(mlp_cost)
                - sum(mlp_cost[layer] for layer in mlp)) / plain
        speedup = (1 + matchness * 2) / (1 + 2 * cost)
        attrs = {"skip_attention": attention, "skip_mlp": mlp, "skipped": len(chosen), "matchness": matchness,
                 "expected_acceptance": matchness ** 1.5, "draft_cost": cost, "draft_tokens": 2,
                 "predicted_speedup": speedup}
        if number < 2:
            attrs["warm_start"] = True
        values = {"matchness": [matchness], "speedup": [speedup], "pareto": [cost, matchness]}[objective]
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={p: FloatDistribution(0, 1) for p in params}, values=values,
            user_attrs=attrs))
    trials = study.trials
    ranked = sorted(trials, key=lambda t: -t.user_attrs["predicted_speedup"])[:3]
    rescored = [{"skip_attention": t.user_attrs["skip_attention"], "skip_mlp": t.user_attrs["skip_mlp"],
                 "max_draft_tokens": 2, "confidence_threshold": 0.8, "matchness": t.user_attrs["matchness"] - 0.02,
                 "acceptance_rate": t.user_attrs["expected_acceptance"] - 0.05, "mean_accepted_tokens": 1.4,
                 "decode_speedup": t.user_attrs["predicted_speedup"] * 0.9,
                 "predicted_acceptance": t.user_attrs["expected_acceptance"],
                 "predicted_speedup": t.user_attrs["predicted_speedup"],
                 "tokens_per_s": 25.0, "plain_tokens_per_s": 26.0, "trial": t.number, "extra": {},
                 "lossless": {"identical": 3, "tie_flip": 1, "error": 0}, "rounds": 9, "ngram_rounds": 4,
                 "plain_steps": 7} for t in ranked]
    attrs = {"objective": objective, "sampler": "tpe", "skip_budget": k,
             "importance": [[kind, layer, 1 - harm[(kind, layer)]] for kind, layer in eligible],
             "costs": {"attention": attn_cost, "mlp": mlp_cost, "fixed": fixed, "verify": [plain, plain * 1.1],
                       "device": "cpu (2 threads)", "dtype": "float32", "context_tokens": 100},
             "rescored": rescored, "exported_profile": f"reports/{name}.profile.yaml"}
    if transfer:
        attrs["transfer"] = [{"profile_task": a, "eval_task": b, "matchness": 0.8,
                              "decode_speedup": 1.1 if a == b else 0.9,
                              "acceptance_rate": 0.7 if a == b else 0.4}
                             for a in (task, "gsm8k") for b in (task, "gsm8k")]
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    return study


def profile_text(study: optuna.Study, task: str = "humaneval") -> str:
    best = study.user_attrs["rescored"][0]
    return (f"skipsearch_profile: 1\nmodel:\n  name: smollm2-135m\n  architecture: llama\n  num_hidden_layers: 8\n"
            f"  fingerprint: sha256:00\ntask: {task!r}\nskip:\n  attention: {best['skip_attention']}\n"
            f"  mlp: {best['skip_mlp']}\ndraft:\n  max_draft_tokens: 2\n  confidence_threshold: 0.8\n")


def gather(study, task="humaneval", **kwargs):
    return reports.gather_report_data([study], {study.study_name: profile_text(study, task)},
                                      ["skipsearch search studies/demo.yaml"], None, **kwargs)


@pytest.mark.parametrize("objective", ["matchness", "speedup", "pareto"])
def test_history_best_so_far_is_monotone_and_uses_matchness_for_pareto(objective):
    study = make_study(objective)
    data = gather(study)
    (history,) = data.histories
    assert history.trials == [t.number for t in study.trials]
    assert all(b2 >= b1 for b1, b2 in zip(history.best, history.best[1:]))
    assert history.best[-1] == max(history.values)
    assert all(b >= v for b, v in zip(history.best, history.values))
    key = "predicted_speedup" if objective == "speedup" else "matchness"
    assert history.values == [t.user_attrs[key] for t in study.trials]
    assert history.warm_start[:3] == [True, True, False]
    assert data.studies[0].objective == objective and data.studies[0].model == "smollm2-135m"


@pytest.mark.parametrize("objective", ["matchness", "speedup", "pareto"])
def test_pareto_flags_mark_exactly_the_non_dominated_trials(objective):
    study = make_study(objective, n_trials=40)
    data = gather(study)
    points = data.pareto
    assert len(points) == 40
    for p in points:
        dominated = any(q.draft_cost <= p.draft_cost and q.matchness >= p.matchness
                        and (q.draft_cost < p.draft_cost or q.matchness > p.matchness) for q in points)
        assert p.is_front == (not dominated)
    exported = [p for p in points if p.is_exported]
    assert exported and {p.trial for p in exported} >= {study.user_attrs["rescored"][0]["trial"]}
    if objective == "pareto":
        assert {p.trial for p in points if p.is_front} == {t.number for t in study.best_trials}


@pytest.mark.parametrize("objective", ["matchness", "speedup", "pareto"])
def test_heat_map_shares_count_the_top_trials(objective):
    study = make_study(objective, n_trials=60)
    (heat,) = gather(study).heat
    assert heat.layers == list(range(8)) and heat.top_n == reports.top_n(60) == 12
    # layers 0 and 7 are never eligible: no share, no importance
    for kind in ("attention", "mlp"):
        assert heat.share[kind][0] is None and heat.share[kind][7] is None
        assert heat.importance[kind][0] is None
        assert all(0 <= s <= 1 for s in heat.share[kind][1:7])
    if objective != "pareto":
        best = sorted(study.trials, key=lambda t: -t.values[0])[:12]
        expected = sum(3 in t.user_attrs["skip_mlp"] for t in best) / 12
        assert heat.share["mlp"][3] == pytest.approx(expected)
    assert heat.importance["attention"][1] == pytest.approx(1 - 0.004 * 2)


def test_top_n_is_a_fifth_at_least_ten():
    assert [reports.top_n(n) for n in (3, 10, 40, 50, 51, 1000)] == [3, 10, 10, 10, 11, 200]


def test_rescored_tasks_and_transfer():
    studies = [make_study("speedup", name="code", task="humaneval", transfer=True),
               make_study("pareto", name="math", task="gsm8k", seed=1)]
    texts = {"code": profile_text(studies[0]), "math": profile_text(studies[1], "gsm8k")}
    data = reports.gather_report_data(studies, texts, [], [{"method": "tpe", "evaluations": "40"}])
    assert [r.rank for r in data.rescored] == [0, 1, 2, 0, 1, 2]
    first = data.rescored[0]
    assert first.lossless == "3 / 1 / 0" and first.rounds == "4 / 5 / 0 / 7"
    assert first.predicted_speedup == pytest.approx(first.decode_speedup / 0.9)
    assert first.predicted_acceptance == pytest.approx(first.acceptance_rate + 0.05)
    assert [(t.study, t.task) for t in data.tasks] == [("code", "humaneval"), ("math", "gsm8k")]
    assert data.tasks[0].best_decode_speedup == max(r.decode_speedup for r in data.rescored if r.study == "code")
    assert data.transfer.profile_tasks == ["gsm8k", "humaneval"] == data.transfer.eval_tasks
    assert data.transfer.acceptance == [[0.7, 0.4], [0.4, 0.7]]
    titles = [title for title, _ in build_figures(data)]
    assert sum(t.startswith("Skipped sublayers") for t in titles) == 2
    assert "Cross-task transfer of profiles" in titles and "Best re-scored candidate per study" in titles
    assert sum(t.startswith("Optimisation history") for t in titles) == 2  # speedup and matchness axes


def test_a_study_rescored_before_the_speedups_were_named_apart_still_reports():
    """Older studies stored the measured decode speedup as `speedup`, and no replayed acceptance."""
    study = make_study("speedup", name="old", transfer=True)
    old = [{("speedup" if k == "decode_speedup" else k): v for k, v in r.items() if k != "predicted_acceptance"}
           for r in study.user_attrs["rescored"]]
    study.set_user_attr("rescored", old)
    study.set_user_attr("transfer", [{("speedup" if k == "decode_speedup" else k): v for k, v in r.items()}
                                     for r in study.user_attrs["transfer"]])
    data = reports.gather_report_data([study], None, [], None)
    assert [r.decode_speedup for r in data.rescored] == [r["speedup"] for r in old]
    assert all(r.predicted_acceptance is None for r in data.rescored)
    assert data.transfer.decode_speedup[0][0] == 1.1


def test_a_study_without_trials_or_rescoring_still_reports():
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), study_name="empty")
    data = reports.gather_report_data([study], None, [], None)
    assert data.histories == [] and data.notes
    html_text = render_report(data, build_figures(data))
    assert "no finished trial" in html_text


def test_a_study_without_costs_or_importance_infers_the_layers():
    study = make_study("matchness", num_layers=6)
    for key in ("costs", "importance", "rescored"):
        study.set_user_attr(key, None)
    data = reports.gather_report_data([study], None, [], None)
    (heat,) = data.heat
    assert heat.layers == [0, 1, 2, 3, 4] and heat.importance["mlp"] == [None] * 5  # last eligible layer is 4
    assert data.rescored == [] and any("re-scored" in note for note in data.notes)
    titles = [title for title, _ in build_figures(data)]
    assert not any(t.startswith("Predicted") for t in titles)
    page = render_report(data, build_figures(data))
    assert all(html.escape(title) in page for title in titles) and "re-scored" in page


def _outside_plotlyjs(page: str) -> str:
    start = page.index('<script type="text/javascript" id="plotlyjs">')
    return page[:start] + page[page.index("</script>", start):]


def test_html_escapes_user_text_and_loads_nothing_from_the_network():
    study = make_study("speedup", name=XSS, task=XSS, transfer=True)
    data = reports.gather_report_data([study], {XSS: profile_text(study, XSS)}, [f"skipsearch search '{XSS}.yaml'"],
                                      [{"method": XSS, "evaluations": 3}])
    figures = build_figures(data)
    page = render_report(data, figures)
    assert XSS not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 5  # header, tables, profile, commands
    assert "alert(1)</script>" not in page and "<\\/script>" not in page.replace("&lt;/script&gt;", "")
    assert page.count('id="plotlyjs"') == 1 and page.count("<script") == 1 + len(figures)
    ours = _outside_plotlyjs(page)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", ours, re.I)
    assert "cdn.plot.ly" not in ours and "<link" not in ours
    for _, figure in figures:  # plotly renders HTML in titles, legends and hover text
        text = figure.to_json()
        assert "<script>" not in text


def test_write_report_is_atomic_and_needs_the_folder(tmp_path):
    target = tmp_path / "r.html"
    write_report(target, "<html>one</html>")
    write_report(target, "<html>two</html>")
    assert target.read_text() == "<html>two</html>"
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]
    with pytest.raises(SkipsearchError, match="does not exist"):
        write_report(tmp_path / "missing" / "r.html", "x")


def _study_file(tmp_path, name="demo"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nmodel:\n  name: smollm2-135m\ntask:\n  source: humaneval\n"
                    f"output:\n  profile: {tmp_path / (name + '.profile.yaml')}\n"
                    f"  report: {tmp_path / (name + '.html')}\n")
    return path


@pytest.mark.slow
def test_report_command_writes_the_page(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _study_file(tmp_path)
    storage = f"sqlite:///{tmp_path / 'demo.db'}"
    study = make_study("pareto", name="demo", storage=optuna.storages.RDBStorage(storage))
    (tmp_path / "demo.profile.yaml").write_text(profile_text(study))
    study.set_user_attr("exported_profile", str(tmp_path / "demo.profile.yaml"))
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "compare-demo.csv").write_text("method,evaluations,decode_speedup\nrandom,40,0.95\n")
    assert main(["report", str(path)]) == 0
    out = capsys.readouterr().out.strip()
    assert out.endswith("demo.html")
    page = (tmp_path / "demo.html").read_text()
    assert "Comparison of search methods" in page and "random" in page and "fingerprint: sha256:00" in page
    assert "skipsearch search" in page and "skipsearch report" in page
    assert main(["report", str(path), "-o", str(tmp_path / "nowhere" / "x.html")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_report_command_names_a_missing_study(tmp_path, capsys):
    path = _study_file(tmp_path, "absent")
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert "no study absent" in err and "skipsearch search" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "absent.db").exists()  # reporting does not create a storage


def test_report_transfer_needs_two_studies(tmp_path, capsys):
    path = _study_file(tmp_path)
    make_study("matchness", name="demo", n_trials=3,
               storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'demo.db'}"))
    assert main(["report", str(path), "--transfer"]) == 2
    assert "at least two studies" in capsys.readouterr().err
    assert not (tmp_path / "demo.html").exists()


def test_write_study_report_for_the_search_command(tmp_path):
    study = make_study("matchness", name="demo")
    from skipsearch.config.studies import load_study

    path = _study_file(tmp_path)
    written = write_one_report(study, load_study(path), path, tmp_path / "out.html")
    assert written.read_text().count("Optimisation history") == 1


def write_one_report(study, config, study_path, target):
    return write_study_report(study, config, study_path, "sqlite:///x.db", target, "skipsearch search demo.yaml")
