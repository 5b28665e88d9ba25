"""Chargeback CSV: grouping, totals row, USD precision, CSV-injection escaping."""

import csv
import io

import pytest

from apps.billing.exports import csv_safe

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("=SUM(A1)", "'=SUM(A1)"),
        ("+1", "'+1"),
        ("-1", "'-1"),
        ("@cmd", "'@cmd"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("acme", "acme"),
        ("a=b", "a=b"),
        (12, 12),
    ],
)
def test_csv_safe(value, expected):
    assert csv_safe(value) == expected


def _table(response):
    assert response.status_code == 200, response.content
    return list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))


def test_chargeback_by_customer_escapes_and_totals(client, finance_user, billing_usage):
    client.force_login(finance_user)
    response = client.get(
        "/api/usage/chargeback.csv", {"month": "2026-10", "group_by": "tag.customer_id"}
    )
    assert response["Content-Disposition"] == (
        'attachment; filename="chargeback_20261001_20261101.csv"'
    )
    table = _table(response)
    assert table[0] == [
        "tag.customer_id", "requests", "input_tokens", "output_tokens", "cached_tokens",
        "cache_write_tokens", "total_tokens", "cost_usd", "currency",
    ]  # fmt: skip
    rows = {row[0]: row for row in table[1:-1]}
    assert set(rows) == {"acme", "globex", '\'=HYPERLINK("x")'}
    assert rows["acme"][1] == "6" and rows["acme"][7] == "0.060000"
    assert table[-1] == ["TOTAL", "15", "6000", "600", "0", "0", "6600", "2.600000", "USD"]


def test_chargeback_defaults_to_team_and_range(client, finance_user, billing_usage):
    client.force_login(finance_user)
    table = _table(
        client.get("/api/usage/chargeback.csv", {"start": "2026-10-06", "end": "2026-10-06"})
    )
    assert table[0][:2] == ["team", "team_id"]
    assert [row[0] for row in table[1:]] == ["backend", "TOTAL"]
    response = client.get("/api/usage/chargeback.csv", {"month": "2026-13"})
    assert response.status_code == 400
    response = client.get("/api/usage/chargeback.csv", {"group_by": "nope"})
    assert response.status_code == 400
