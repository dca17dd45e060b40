"""Drawing for reports: plotly figures from `data.ReportData`, nothing else.

Each `_plot_*` takes gathered data and returns a figure; it computes nothing that a test
would need to check (that lives in `data.gather_report_data`). Plotly renders a subset of
HTML in titles, legends, tick labels and hover text, so every string that comes from a study
(names, samplers, tasks) goes through `html.escape` first.
"""

from __future__ import annotations

import html
from collections import defaultdict

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from skipsearch.reporting.data import ReportData

KINDS = ("attention", "mlp")
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
_LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=30, t=50, b=50))


def _e(text) -> str:
    return html.escape(str(text))


def _color(i: int) -> str:
    return COLORS[i % len(COLORS)]


def build_figures(data: ReportData) -> list[tuple[str, go.Figure]]:
    """(section title, figure) pairs in page order; sections without data are left out."""
    figures = []
    by_value = defaultdict(list)
    for history in data.histories:
        by_value[history.value_name].append(history)
    for value_name, histories in by_value.items():
        figures.append((f"Optimisation history ({value_name})", _plot_history(value_name, histories)))
    if data.pareto:
        figures.append(("Draft cost against matchness (Pareto front)", _plot_pareto(data)))
    for heat in data.heat:
        figures.append((f"Skipped sublayers per layer: {heat.study}", _plot_heat(heat)))
    if data.rescored:
        figures.append(("Predicted against measured (re-scored candidates)", _plot_rescored(data)))
    if len(data.tasks) > 1:
        figures.append(("Best re-scored candidate per study", _plot_tasks(data)))
    if data.transfer is not None:
        figures.append(("Cross-task transfer of profiles", _plot_transfer(data)))
    return figures


def _plot_history(value_name: str, histories) -> go.Figure:
    fig = go.Figure()
    for i, h in enumerate(histories):
        label = _e(f"{h.study} ({h.sampler})")
        symbols = ["diamond" if warm else "circle" for warm in h.warm_start]
        hover = [f"trial {n}{' (warm start)' if warm else ''}" for n, warm in zip(h.trials, h.warm_start)]
        fig.add_trace(go.Scatter(x=h.trials, y=h.values, mode="markers", name=f"{label}: trials",
                                 legendgroup=str(i), marker=dict(color=_color(i), opacity=0.4, size=6, symbol=symbols),
                                 text=hover, hovertemplate="%{text}<br>" + _e(value_name) + " %{y:.4f}<extra></extra>"))
        fig.add_trace(go.Scatter(x=h.trials, y=h.best, mode="lines", name=f"{label}: best so far",
                                 legendgroup=str(i), line=dict(color=_color(i), width=2, shape="hv")))
    fig.update_layout(**_LAYOUT, xaxis_title="trial", yaxis_title=_e(value_name), height=420,
                      legend=dict(orientation="h", y=-0.2))
    return fig


def _plot_pareto(data: ReportData) -> go.Figure:
    fig = go.Figure()
    studies = list(dict.fromkeys(p.study for p in data.pareto))
    for i, study in enumerate(studies):
        points = [p for p in data.pareto if p.study == study]
        label = _e(study)
        hover = [f"trial {p.trial}<br>skipped {p.skipped}<br>expected acceptance "
                 f"{'n/a' if p.expected_acceptance is None else f'{p.expected_acceptance:.3f}'}" for p in points]
        fig.add_trace(go.Scatter(x=[p.draft_cost for p in points], y=[p.matchness for p in points], mode="markers",
                                 name=f"{label}: trials", legendgroup=str(i), text=hover,
                                 marker=dict(color=_color(i), opacity=0.3, size=6),
                                 hovertemplate="%{text}<br>draft cost %{x:.3f}<br>matchness %{y:.4f}<extra></extra>"))
        front = sorted((p for p in points if p.is_front), key=lambda p: p.draft_cost)
        fig.add_trace(go.Scatter(x=[p.draft_cost for p in front], y=[p.matchness for p in front],
                                 mode="lines+markers", name=f"{label}: Pareto front", legendgroup=str(i),
                                 line=dict(color=_color(i), shape="hv"), marker=dict(size=8),
                                 text=[f"trial {p.trial}" for p in front],
                                 hovertemplate="%{text}<br>draft cost %{x:.3f}<br>matchness %{y:.4f}<extra></extra>"))
        exported = [p for p in points if p.is_exported]
        if exported:
            fig.add_trace(go.Scatter(x=[p.draft_cost for p in exported], y=[p.matchness for p in exported],
                                     mode="markers", name=f"{label}: exported profile", legendgroup=str(i),
                                     marker=dict(color=_color(i), size=16, symbol="star",
                                                 line=dict(color="black", width=1))))
    fig.update_layout(**_LAYOUT, height=460, xaxis_title="draft step cost / full step (lower is cheaper)",
                      yaxis_title="matchness", legend=dict(orientation="h", y=-0.2))
    return fig


def _plot_heat(heat) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.18, subplot_titles=(
        f"share of the best {heat.top_n} trials that skip it", "matchness when skipped alone"))
    y = heat.layers
    fig.add_trace(go.Heatmap(z=[[heat.share[k][j] for k in KINDS] for j in range(len(y))], x=list(KINDS), y=y,
                             zmin=0, zmax=1, colorscale="Blues", colorbar=dict(x=0.41, title="share"),
                             hovertemplate="layer %{y} %{x}<br>share %{z:.2f}<extra></extra>"), row=1, col=1)
    has_importance = any(v is not None for k in KINDS for v in heat.importance[k])
    if has_importance:
        fig.add_trace(go.Heatmap(z=[[heat.importance[k][j] for k in KINDS] for j in range(len(y))], x=list(KINDS),
                                 y=y, colorscale="Viridis", colorbar=dict(x=1.0, title="matchness"),
                                 hovertemplate="layer %{y} %{x}<br>matchness %{z:.3f}<extra></extra>"), row=1, col=2)
    else:
        fig.add_annotation(text="no importance recorded", showarrow=False, row=1, col=2, x=0.5, y=0.5,
                           xref="x2 domain", yref="y2 domain")
    fig.update_yaxes(title_text="decoder layer (0-based)", dtick=1 if len(y) <= 40 else None, row=1, col=1)
    fig.update_yaxes(dtick=1 if len(y) <= 40 else None, row=1, col=2)
    fig.update_layout(**_LAYOUT, height=max(360, 18 * len(y) + 120))
    return fig


def _plot_rescored(data: ReportData) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12, subplot_titles=(
        "decode speedup: cost model against wall clock",
        "acceptance (accepted / drafted): replayed against decoded, held-out prompts"))
    studies = list(dict.fromkeys(r.study for r in data.rescored))
    pairs = (("predicted_speedup", "decode_speedup"), ("predicted_acceptance", "acceptance_rate"))
    for col, (xs, ys) in enumerate(pairs, 1):
        values = [v for r in data.rescored for v in (getattr(r, xs), getattr(r, ys)) if v is not None]
        if values:
            low, high = min(values), max(values)
            pad = 0.05 * (high - low or 1)
            fig.add_trace(go.Scatter(x=[low - pad, high + pad], y=[low - pad, high + pad], mode="lines",
                                     name="y = x", showlegend=col == 1, legendgroup="diag",
                                     line=dict(color="grey", dash="dash")), row=1, col=col)
        for i, study in enumerate(studies):
            rows = [r for r in data.rescored if r.study == study and getattr(r, xs) is not None
                    and getattr(r, ys) is not None]
            fig.add_trace(go.Scatter(
                x=[getattr(r, xs) for r in rows], y=[getattr(r, ys) for r in rows], mode="markers",
                name=_e(study), legendgroup=str(i), showlegend=col == 1,
                marker=dict(color=_color(i), size=[14 if r.rank == 0 else 9 for r in rows],
                            symbol=["star" if r.rank == 0 else "circle" for r in rows]),
                text=[_e(f"trial {r.trial}: {r.skip}") for r in rows],
                hovertemplate="%{text}<br>x %{x:.3f}<br>y %{y:.3f}<extra></extra>"), row=1, col=col)
    fig.update_xaxes(title_text="predicted decode speedup", row=1, col=1)
    fig.update_yaxes(title_text="measured decode speedup", row=1, col=1)
    fig.update_xaxes(title_text="predicted acceptance rate (replay)", row=1, col=2)
    fig.update_yaxes(title_text="measured acceptance rate (decoder)", row=1, col=2)
    fig.update_layout(**_LAYOUT, height=440, legend=dict(orientation="h", y=-0.2))
    return fig


def _plot_tasks(data: ReportData) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=("best measured acceptance rate", "best decode speedup"))
    labels = [_e(f"{t.study}" + (f" ({t.task})" if t.task else "")) for t in data.tasks]
    fig.add_trace(go.Bar(x=labels, y=[t.best_acceptance for t in data.tasks], name="acceptance rate",
                         marker_color=_color(0)), row=1, col=1)
    fig.add_trace(go.Bar(x=labels, y=[t.best_decode_speedup for t in data.tasks], name="measured",
                         marker_color=_color(1)), row=1, col=2)
    fig.add_trace(go.Bar(x=labels, y=[t.best_predicted_speedup for t in data.tasks], name="predicted",
                         marker_color=_color(2)), row=1, col=2)
    fig.add_hline(y=1.0, line_dash="dash", line_color="grey", row=1, col=2)
    fig.update_layout(**_LAYOUT, height=420, barmode="group", legend=dict(orientation="h", y=-0.3))
    return fig


def _plot_transfer(data: ReportData) -> go.Figure:
    t = data.transfer

    def cell(i: int, j: int) -> str:
        parts = [f"{name} {grid[i][j]:.2f}" for name, grid in (("acc", t.acceptance), ("speedup", t.decode_speedup))
                 if grid[i][j] is not None]
        return "<br>".join(parts)

    text = [[cell(i, j) for j in range(len(t.eval_tasks))] for i in range(len(t.profile_tasks))]
    fig = go.Figure(go.Heatmap(z=t.acceptance, x=[_e(x) for x in t.eval_tasks], y=[_e(y) for y in t.profile_tasks],
                               text=text, texttemplate="%{text}", colorscale="Blues", zmin=0, zmax=1,
                               colorbar=dict(title="acceptance"),
                               hovertemplate="profile from %{y}<br>evaluated on %{x}<br>%{text}<extra></extra>"))
    fig.update_layout(**_LAYOUT, height=max(320, 60 * len(t.profile_tasks) + 160),
                      xaxis_title="evaluated on task", yaxis_title="profile searched on task")
    return fig
