"""Figures as a person receives them: the KPI tiles, table cells and Plotly figure JSON of the
overview, cost and tag pages, parsed from the HTML and compared with sums over the rows.

12,000 requests and 912,194 tokens sit in the range the old "k" (paired with 10,000)
rendered as a tenth ("1.2k", "91.2k").
"""

from __future__ import annotations

import datetime as dt
import json
import re
from decimal import ROUND_HALF_UP, Decimal
from html.parser import HTMLParser

import pytest
from django.utils import timezone

from apps.accounts.constants import Role
from apps.dashboards import charts
from apps.dashboards.selectors import NONE_LABEL, PercentilePoint, UsagePoint
from apps.usage.models import UsageRecord
from tests import factories

from .conftest import PASSWORD

pytestmark = [pytest.mark.embedded, pytest.mark.django_db]

ROWS = 12_000
TOKENS = 912_194
# (feature tag or None, rows, cost per row): the untagged rows form the empty bucket.
GROUPS = [("search", 7_000, "0.000700"), ("chat", 4_000, "0.000500"), (None, 1_000, "0.000600")]
ERRORS = 30


class _Page(HTMLParser):
    """KPI tiles, table rows (cell texts) and json_script figures of a rendered page."""

    def __init__(self, html: str):
        super().__init__()
        self.kpis: dict[str, dict] = {}
        self.rows: list[list[str]] = []
        self.figures: dict[str, dict] = {}
        self._kpi: dict | None = None
        self._field: str | None = None
        self._cells: list[str] | None = None
        self._cell: list[str] | None = None
        self._script: str | None = None
        self._script_text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "div" and "d-kpi" in classes:
            self._kpi = {"label": "", "value": "", "title": None, "sub": ""}
        elif tag == "div" and self._kpi is not None and classes:
            self._field = classes[0]
            if self._field == "value":
                self._kpi["title"] = attrs.get("title")
        elif tag == "tr":
            self._cells = []
        elif tag == "td" and self._cells is not None:
            self._cell = []
        elif tag == "script" and attrs.get("type") == "application/json":
            self._script, self._script_text = attrs["id"], []

    def handle_endtag(self, tag):
        if tag == "div" and self._field is not None:
            self._field = None
        elif tag == "div" and self._kpi is not None:
            self.kpis[self._kpi["label"]] = self._kpi
            self._kpi = None
        elif tag == "td" and self._cell is not None:
            self._cells.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._cells is not None:
            if self._cells:
                self.rows.append(self._cells)
            self._cells = None
        elif tag == "script" and self._script is not None:
            self.figures[self._script] = json.loads("".join(self._script_text))
            self._script = None

    def handle_data(self, data):
        if self._kpi is not None and self._field in ("label", "value", "sub"):
            self._kpi[self._field] += data
        if self._cell is not None:
            self._cell.append(data)
        if self._script is not None:
            self._script_text.append(data)


def _usd(amount: Decimal, places: int = 2) -> str:
    return f"${amount.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP):,.{places}f}"


@pytest.fixture
def traffic(db):
    """ROWS requests today, TOKENS tokens in all, ERRORS of them failed, three tag buckets."""
    team = factories.make_team("Platform", slug="platform")
    finance = factories.make_user("fin", team=team, role=Role.FINANCE, password=PASSWORD)
    # Midnight UTC today: always in "today", whatever the time the test runs.
    midnight = timezone.now().astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    rows, n = [], 0
    for feature, count, cost in GROUPS:
        for _ in range(count):
            failed = n < ERRORS
            rows.append(
                UsageRecord(
                    request_id=f"req_fig{n}",
                    created_at=midnight + dt.timedelta(seconds=n % 60),
                    team_id=team.pk,
                    user_id=finance.pk,
                    model="gpt-a",
                    provider="openai",
                    request_type="chat",
                    status_code=500 if failed else 200,
                    error_type="upstream_error" if failed else "",
                    input_tokens=50,
                    output_tokens=26 + (194 if n == 0 else 0),
                    cost_usd=Decimal(cost),
                    latency_ms=850 if n % 2 else 1250,
                    tags={"feature": feature} if feature else {},
                )
            )
            n += 1
    UsageRecord.objects.bulk_create(rows, batch_size=2_000)
    by_group: dict[str, dict] = {}
    for row in rows:
        acc = by_group.setdefault(
            row.tags.get("feature", ""), {"requests": 0, "tokens": 0, "cost": Decimal(0)}
        )
        acc["requests"] += 1
        acc["tokens"] += row.input_tokens + row.output_tokens
        acc["cost"] += row.cost_usd
    expected = {
        "requests": len(rows),
        "errors": sum(r.status_code >= 400 for r in rows),
        "tokens": sum(r.input_tokens + r.output_tokens for r in rows),
        "cost": sum((r.cost_usd for r in rows), Decimal(0)),
        "by_group": by_group,
    }
    # The data set is what the module promises, so the page is checked in the right range.
    assert (expected["requests"], expected["tokens"]) == (ROWS, TOKENS)
    return {"finance": finance, "today": midnight.date(), "expected": expected}


def _get(client, traffic, path: str) -> _Page:
    assert client.login(username=traffic["finance"].username, password=PASSWORD)
    today = traffic["today"]
    response = client.get(f"{path}{'&' if '?' in path else '?'}start={today}&end={today}")
    assert response.status_code == 200
    return _Page(response.content.decode())


def _trace(fig: dict, name: str) -> dict:
    return next(t for t in fig["data"] if t["name"] == name)


def _no_si_suffixes(fig: dict) -> None:
    """Every numeric axis has an explicit format: Plotly's default would print "600µ"."""
    for axis_name, axis in fig["layout"].items():
        if axis_name.startswith(("xaxis", "yaxis")) and axis.get("type") != "date":
            fmt = axis.get("tickformat")
            if fmt is not None:
                assert "s" not in fmt and "e" not in fmt, (axis_name, fmt)


def test_overview_tiles_and_trend_figures(client, traffic):
    expected = traffic["expected"]
    page = _get(client, traffic, "/dashboards/")

    requests = page.kpis["Requests today"]
    assert (requests["value"], requests["title"]) == ("12.0k", "12,000")
    assert requests["sub"] == "12,000 month to date"
    tokens = page.kpis["Tokens today"]
    assert (tokens["value"], tokens["title"]) == ("912.2k", "912,194")
    assert tokens["sub"] == "912,194 month to date"
    cost = page.kpis["Cost today"]
    assert cost["value"] == _usd(expected["cost"]) == "$7.50"
    assert cost["sub"] == "$7.50 month to date"
    errors = page.kpis["Error rate"]
    assert errors["value"] == f"{100 * expected['errors'] / expected['requests']:.2f}%" == "0.25%"
    assert errors["sub"] == "30 of 12,000 in range"
    latency = page.kpis["Latency P50 / P90 / P99"]
    for text in [latency["value"], *latency["sub"].split(" · ")]:
        assert re.fullmatch(r"\d{1,3} ms|\d[\d,]*\.\d\d s", text), text

    trend = page.figures["figure-requests"]
    assert sum(_trace(trend, "Requests")["y"]) == expected["requests"]
    assert sum(_trace(trend, "Errors")["y"]) == expected["errors"]
    money = page.figures["figure-cost"]
    assert sum(_trace(money, "Cost (USD)")["y"]) == pytest.approx(float(expected["cost"]))
    assert sum(_trace(money, "Tokens")["y"]) == expected["tokens"]
    assert money["layout"]["yaxis"]["tickformat"].startswith("$")
    for fig in page.figures.values():
        _no_si_suffixes(fig)


def test_cost_breakdown_by_tag_table_and_chart(client, traffic):
    by_group = traffic["expected"]["by_group"]
    page = _get(client, traffic, "/dashboards/cost/?group=tag:feature")

    table = {cells[0]: cells[1:] for cells in page.rows if len(cells) == 5}
    assert set(table) == {"search", "chat", NONE_LABEL}
    for group, sums in by_group.items():
        assert table[group or NONE_LABEL] == [
            f"{sums['requests']:,}",
            f"{sums['tokens']:,}",
            _usd(sums["cost"]),
            _usd(sums["cost"] / sums["requests"], 6),
        ]
    assert table["search"][:3] == ["7,000", "532,194", "$4.90"]

    fig = page.figures["figure-cost"]
    assert {t["name"] for t in fig["data"]} == set(table)
    for group, sums in by_group.items():
        assert sum(_trace(fig, group or NONE_LABEL)["y"]) == pytest.approx(float(sums["cost"]))
    assert fig["layout"]["yaxis"]["tickformat"].startswith("$")
    _no_si_suffixes(fig)


def test_tag_explorer_table_and_ranking_agree(client, traffic):
    expected = traffic["expected"]
    by_group = expected["by_group"]
    page = _get(client, traffic, "/dashboards/tags/?key=feature&rank=cost_usd")

    table = [cells for cells in page.rows if len(cells) == 6]
    assert [cells[0] for cells in table] == ["search", "chat", NONE_LABEL]
    for cells in table:
        sums = by_group["" if cells[0] == NONE_LABEL else cells[0]]
        assert cells[1:5] == [
            _usd(sums["cost"]),
            f"{sums['tokens']:,}",
            f"{sums['requests']:,}",
            _usd(sums["cost"] / sums["requests"], 6),
        ]
    assert [cells[4] for cells in table] == ["$0.000700", "$0.000500", "$0.000600"]

    ranking = page.figures["figure-tag-ranking"]["data"][0]
    # Horizontal bars, largest at the top: plotly draws the last entry on top.
    assert ranking["y"][::-1] == [cells[0] for cells in table]
    assert ranking["x"][::-1] == pytest.approx([float(by_group[g]["cost"]) for g in by_group])
    assert sum(ranking["x"]) == pytest.approx(float(expected["cost"]))
    layout = page.figures["figure-tag-ranking"]["layout"]
    assert layout["xaxis"]["tickformat"].startswith("$")
    _no_si_suffixes(page.figures["figure-tag-ranking"])


def test_figure_units_follow_the_filter_rules():
    """Durations switch to seconds from one second on, as the `ms` filter does; tiny costs
    get a plain decimal axis format (no "µ"); the empty group has the tables' name."""
    bucket = dt.datetime(2025, 3, 10, tzinfo=dt.UTC)
    fast = [PercentilePoint(bucket, "m", 3, 120.0, 850.4, 999.4, 0, None, None, None)]
    slow = [PercentilePoint(bucket, "m", 3, 120.0, 850.0, 1250.0, 0, None, None, None)]
    fig = charts.to_json_data(charts.latency_trend(fast))
    assert fig["layout"]["yaxis"]["title"]["text"] == "ms"
    assert _trace(fig, "Latency P99")["y"] == [999.4]
    fig = charts.to_json_data(charts.latency_trend(slow))
    assert fig["layout"]["yaxis"]["title"]["text"] == "s"
    assert _trace(fig, "Latency P99")["y"] == [1.25]
    assert fig["layout"]["yaxis"]["hoverformat"] == ",.2f"

    tiny = [UsagePoint(bucket, "", 1, 0, 10, 5, Decimal("0.000600"))]
    fig = charts.to_json_data(charts.stacked_cost(tiny))
    assert [t["name"] for t in fig["data"]] == [NONE_LABEL]
    assert fig["data"][0]["y"] == [0.0006]
    assert fig["layout"]["yaxis"]["tickformat"] == "$,.4~f"
    assert "µ" not in json.dumps(fig)
    ranking = charts.to_json_data(charts.ranking_bar(tiny, metric="cost_per_request"))
    assert ranking["data"][0]["y"] == [NONE_LABEL]
    assert ranking["layout"]["xaxis"]["tickformat"] == "$,.4~f"
