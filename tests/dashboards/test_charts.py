"""Figures from selector output, without HTTP or the database."""

import datetime as dt
import json
from decimal import Decimal

import pytest

from apps.dashboards import charts
from apps.dashboards.selectors import OTHER, PercentilePoint, UsagePoint

pytestmark = pytest.mark.embedded

T1 = dt.datetime(2025, 3, 10, tzinfo=dt.UTC)
T2 = dt.datetime(2025, 3, 11, tzinfo=dt.UTC)
EVIL = "<script>alert(1)</script>"


def point(bucket, group, requests=1, cost="1", errors=0):
    return UsagePoint(bucket, group, requests, errors, 10, 5, Decimal(cost))


def test_stacked_cost_orders_by_total_with_other_last():
    fig = charts.stacked_cost(
        [point(T1, OTHER, cost="9"), point(T1, "a", cost="1"), point(T1, "b", cost="5"),
         point(T2, "a", cost="1")]
    )  # fmt: skip
    assert [t.name for t in fig.data] == ["b", "a", OTHER]
    assert fig.layout.barmode == "stack"
    assert list(fig.data[1].y) == [1.0, 1.0]


def test_untrusted_names_are_escaped_for_plotly():
    fig = charts.error_rate_lines([point(T1, EVIL, requests=4, errors=1)])
    assert fig.data[0].name == "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert list(fig.data[0].y) == [25.0]
    assert EVIL not in json.dumps(charts.to_json_data(fig))


def test_percentile_lines_skip_groups_without_values():
    rows = [
        PercentilePoint(T1, "m1", 3, 10, 20, 30, 2, 5, 6, 7),
        PercentilePoint(T1, "m2", 1, 10, 20, 30, 0, None, None, None),
    ]
    assert [t.name for t in charts.percentile_lines(rows, pct="p90").data] == ["m1", "m2"]
    ttft = charts.percentile_lines(rows, pct="p99", ttft=True)
    assert [(t.name, list(t.y)) for t in ttft.data] == [("m1", [7])]


def test_empty_figures_say_so():
    fig = charts.requests_trend([])
    assert not fig.data
    assert fig.layout.annotations[0].text == "No usage in this range"


def test_ranking_bar_puts_the_largest_on_top():
    fig = charts.ranking_bar([point(None, "big", cost="5"), point(None, "small", cost="1")],
                             metric="cost_usd")  # fmt: skip
    assert list(fig.data[0].y) == ["small", "big"]
