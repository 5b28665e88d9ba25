"""Plotly figures from selector output. Pure: no request, no ORM; tested without HTTP.

Group names can be tag values, which are untrusted. Plotly renders a small HTML subset in
trace names, ticks and hover text, so every such string goes through `_text`, which escapes
it; plotly turns the entities back into literal characters on screen, never into markup.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Sequence
from decimal import Decimal

import plotly.graph_objects as go

from .selectors import NONE_LABEL, OTHER, PercentilePoint, UsagePoint

PALETTE = [
    "#3b5bdb", "#f08c00", "#2f9e44", "#e03131", "#7048e8",
    "#0c8599", "#d6336c", "#5c940d", "#1971c2", "#e8590c",
    "#862e9c", "#495057",
]  # fmt: skip
OTHER_COLOR = "#adb5bd"
HEIGHT = 330

# Axis and hover number formats (d3-format), the same rules as the `usage_format` filters.
# Plotly's default ("B" exponents) labels small values with SI prefixes, which reads as
# "600µ" on a USD axis; explicit formats keep plain decimals with thousands separators.
COUNT_FORMAT = {"tickformat": ",~f", "hoverformat": ",~f"}
USD_FORMAT = {"tickformat": "$,.4~f", "hoverformat": "$,.6~f"}
PERCENT_FORMAT = {"tickformat": ",.2~f", "hoverformat": ",.2f"}
MS_FORMAT = {"tickformat": ",~f", "hoverformat": ",.0f"}
SECONDS_FORMAT = {"tickformat": ",.2~f", "hoverformat": ",.2f"}


def _text(value: object) -> str:
    return html.escape(str(value), quote=False)


def label(group: str) -> str:
    """A group's trace or bar name: escaped, and the empty group named as the tables name it."""
    return _text(group) if group else NONE_LABEL


def _duration_unit(values: Sequence[float | None]) -> tuple[int, str, dict]:
    """Divisor, unit and formats for a duration axis in milliseconds.

    The `ms` filter's rule applied to a whole axis: once a value reaches one second the
    figure is drawn in seconds, otherwise in milliseconds.
    """
    present = [v for v in values if v is not None]
    if present and round(max(present)) >= 1000:
        return 1000, "s", SECONDS_FORMAT
    return 1, "ms", MS_FORMAT


def _layout(
    fig: go.Figure,
    *,
    y_title: str = "",
    y_format: dict = COUNT_FORMAT,
    stacked: bool = False,
    **extra,
) -> go.Figure:
    settings = {
        "template": "plotly_white",
        "height": HEIGHT,
        "margin": {"l": 56, "r": 16, "t": 12, "b": 40},
        "legend": {"orientation": "h", "y": -0.18, "x": 0},
        "hovermode": "x unified",
        "barmode": "stack" if stacked else None,
        "yaxis": {"title": {"text": y_title}, "rangemode": "tozero", **y_format},
        "font": {"family": "system-ui, -apple-system, Segoe UI, sans-serif", "size": 12},
    }
    fig.update_layout(**{**settings, **extra})
    if not fig.data:
        fig.add_annotation(
            text="No usage in this range", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper"
        )
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
    return fig


def to_json_data(fig: go.Figure) -> dict:
    """The figure as plain JSON data, for `json_script` in a template."""
    return json.loads(fig.to_json())


def _groups(points: Sequence, weight: str) -> list[str]:
    """Groups by descending total `weight`, "other" last."""
    totals: dict[str, float] = {}
    for p in points:
        totals[p.group] = totals.get(p.group, 0.0) + float(getattr(p, weight) or 0)
    ordered = sorted(totals, key=lambda g: (g == OTHER, -totals[g], g))
    return ordered


def _color(i: int, group: str) -> str:
    return OTHER_COLOR if group == OTHER else PALETTE[i % len(PALETTE)]


def _money(value: Decimal) -> float:
    return float(round(value, 6))


# --- Overview -------------------------------------------------------------------------


def requests_trend(points: Sequence[UsagePoint]) -> go.Figure:
    fig = go.Figure()
    if points:
        x = [p.bucket for p in points]
        fig.add_scatter(x=x, y=[p.requests for p in points], name="Requests", mode="lines+markers",
                        line={"color": PALETTE[0]}, marker={"size": 4})  # fmt: skip
        fig.add_scatter(x=x, y=[p.errors for p in points], name="Errors", mode="lines+markers",
                        line={"color": PALETTE[3]}, marker={"size": 4})  # fmt: skip
    return _layout(fig, y_title="requests")


def cost_trend(points: Sequence[UsagePoint]) -> go.Figure:
    fig = go.Figure()
    if points:
        x = [p.bucket for p in points]
        fig.add_bar(x=x, y=[_money(p.cost_usd) for p in points], name="Cost (USD)",
                    marker={"color": PALETTE[0]})  # fmt: skip
        fig.add_scatter(x=x, y=[p.tokens for p in points], name="Tokens", yaxis="y2",
                        mode="lines+markers", line={"color": PALETTE[1]}, marker={"size": 4})  # fmt: skip
    return _layout(
        fig,
        y_title="USD",
        y_format=USD_FORMAT,
        yaxis2={"title": {"text": "tokens"}, "overlaying": "y", "side": "right",
                "rangemode": "tozero", "showgrid": False, **COUNT_FORMAT,
                # Own round ticks: synced to the USD axis they read 298,309.318729.
                "tickmode": "auto"},
    )  # fmt: skip


def _scaled(values: Sequence[float | None], divisor: int) -> list[float | None]:
    return [None if v is None else round(v / divisor, 3) for v in values]


def latency_trend(points: Sequence[PercentilePoint]) -> go.Figure:
    fields = ["p50_ms", "p90_ms", "p99_ms"]
    if any(p.streams for p in points):
        fields += ["ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms"]
    divisor, unit, y_format = _duration_unit([getattr(p, f) for p in points for f in fields])
    fig = go.Figure()
    if points:
        x = [p.bucket for p in points]
        for i, field in enumerate(fields):
            pct = field.removesuffix("_ms").removeprefix("ttft_").upper()
            ttft = field.startswith("ttft_")
            fig.add_scatter(x=x, y=_scaled([getattr(p, field) for p in points], divisor),
                            name=f"{'TTFT' if ttft else 'Latency'} {pct}", mode="lines",
                            line={"color": PALETTE[i % 3], "dash": "dot" if ttft else None})  # fmt: skip
    return _layout(fig, y_title=unit, y_format=y_format)


# --- Breakdowns -----------------------------------------------------------------------


def _by_group(points: Sequence, weight: str) -> dict[str, list]:
    series: dict[str, list] = {}
    for p in points:
        series.setdefault(p.group, []).append(p)
    return {g: series[g] for g in _groups(points, weight)}


def stacked_cost(points: Sequence[UsagePoint]) -> go.Figure:
    fig = go.Figure()
    for i, (group, rows) in enumerate(_by_group(points, "cost_usd").items()):
        fig.add_bar(x=[p.bucket for p in rows], y=[_money(p.cost_usd) for p in rows],
                    name=label(group), marker={"color": _color(i, group)})  # fmt: skip
    return _layout(fig, y_title="USD", y_format=USD_FORMAT, stacked=True, showlegend=True)


def percentile_lines(
    points: Sequence[PercentilePoint], *, pct: str, ttft: bool = False
) -> go.Figure:
    field = f"ttft_{pct}_ms" if ttft else f"{pct}_ms"
    weight = "streams" if ttft else "requests"
    divisor, unit, y_format = _duration_unit([getattr(p, field) for p in points])
    fig = go.Figure()
    for i, (group, rows) in enumerate(_by_group(points, weight).items()):
        rows = [p for p in rows if getattr(p, field) is not None]
        if not rows:
            continue
        fig.add_scatter(x=[p.bucket for p in rows],
                        y=_scaled([getattr(p, field) for p in rows], divisor),
                        name=label(group), mode="lines", line={"color": _color(i, group)})  # fmt: skip
    return _layout(
        fig,
        y_title=f"{'TTFT' if ttft else 'latency'} {pct.upper()} ({unit})",
        y_format=y_format,
        showlegend=True,
    )


def error_rate_lines(points: Sequence[UsagePoint]) -> go.Figure:
    fig = go.Figure()
    for i, (group, rows) in enumerate(_by_group(points, "requests").items()):
        fig.add_scatter(x=[p.bucket for p in rows], y=[round(100 * p.error_rate, 3) for p in rows],
                        name=label(group), mode="lines", line={"color": _color(i, group)})  # fmt: skip
    return _layout(fig, y_title="error rate (%)", y_format=PERCENT_FORMAT, showlegend=True)


def error_types_stacked(points: Sequence[UsagePoint]) -> go.Figure:
    fig = go.Figure()
    for i, (group, rows) in enumerate(_by_group(points, "errors").items()):
        fig.add_bar(x=[p.bucket for p in rows], y=[p.errors for p in rows], name=label(group),
                    marker={"color": _color(i, group)})  # fmt: skip
    return _layout(fig, y_title="errors", stacked=True, showlegend=True)


RANK_LABELS = {
    "cost_usd": "cost (USD)",
    "tokens": "tokens",
    "requests": "requests",
    "cost_per_request": "cost per request (USD)",
}
RANK_FORMATS = {
    "cost_usd": USD_FORMAT,
    "tokens": COUNT_FORMAT,
    "requests": COUNT_FORMAT,
    "cost_per_request": USD_FORMAT,
}


def ranking_bar(points: Sequence[UsagePoint], *, metric: str, limit: int = 20) -> go.Figure:
    """Horizontal bars, largest at the top."""
    rows = list(points)[:limit]
    fig = go.Figure()
    if rows:
        values = [float(getattr(p, metric)) for p in rows]
        labels = [label(p.group) for p in rows]
        fig.add_bar(x=values[::-1], y=labels[::-1], orientation="h", name=RANK_LABELS[metric],
                    marker={"color": PALETTE[0]})  # fmt: skip
    fig = _layout(fig, y_format={}, hovermode="y unified")
    fig.update_layout(
        height=max(HEIGHT, 26 * len(rows) + 80),
        xaxis={"title": {"text": RANK_LABELS[metric]}, **RANK_FORMATS[metric]},
        yaxis={"automargin": True, "title": {"text": ""}},
        showlegend=False,
    )
    return fig


def cost_bar(points: Sequence[UsagePoint]) -> go.Figure:
    fig = go.Figure()
    if points:
        fig.add_bar(x=[label(p.group) for p in points], y=[_money(p.cost_usd) for p in points],
                    name="Cost (USD)", marker={"color": PALETTE[0]})  # fmt: skip
    return _layout(fig, y_title="USD", y_format=USD_FORMAT, hovermode="closest")


def bucket_label(bucket: dt.datetime | None) -> str:
    return bucket.isoformat() if bucket else ""
