"""/api/usage: filters, grouping, formats, raw rows pagination, tenant isolation, 400s."""

import csv
import datetime as dt
import io
import json

import pytest

from apps.accounts.constants import Role
from tests import factories
from tests.billing.conftest import DAY
from tests.billing.helpers import add_usage, usage_row

pytestmark = pytest.mark.django_db

URL = "/api/usage/"
RANGE = {"start": "2026-10-01", "end": "2026-10-31"}


def get(client, url=URL, **params):
    return client.get(url, {**RANGE, **params})


def test_group_by_team_and_model_with_metrics(client, finance_user, billing_usage, team):
    client.force_login(finance_user)
    body = get(client, group_by="team", metrics="requests,tokens,cost,latency,error_rate").json()
    assert body["schema_version"] == "1"
    by_team = {row["team"]: row for row in body["data"]}
    assert set(by_team) == {"frontend", "backend"}
    frontend = by_team["frontend"]
    assert frontend["team_id"] == team.pk
    assert frontend["requests"] == 10
    assert frontend["errors"] == 1 and frontend["error_rate"] == 0.1
    assert frontend["total_tokens"] == 1100
    assert frontend["cost_usd"] == "0.100000"
    # percentile_cont over 10..100 ms.
    assert frontend["latency_p50_ms"] == pytest.approx(55.0)
    assert frontend["latency_p90_ms"] == pytest.approx(91.0)
    assert by_team["backend"]["cost_usd"] == "2.500000"

    rows = get(client, group_by="model,tag.customer_id", team="frontend").json()["data"]
    assert {(r["model"], r["tag.customer_id"]) for r in rows} == {
        ("gpt-4o", "acme"),
        ("gpt-4o-mini", "acme"),
        ("gpt-4o", '=HYPERLINK("x")'),
        ("gpt-4o-mini", '=HYPERLINK("x")'),
    }


def test_filters_granularity_and_bare_tag_keys(client, finance_user, billing_usage):
    client.force_login(finance_user)
    rows = get(client, **{"tag.customer_id": "acme", "granularity": "hour"}).json()["data"]
    assert len(rows) == 6 and rows[0]["period"] == "2026-10-05T12:00:00Z"
    rows = get(client, group_by="customer_id", status="error").json()["data"]
    assert rows == [{**rows[0], "tag.customer_id": '=HYPERLINK("x")', "requests": 1, "errors": 1}]
    rows = get(client, granularity="day", model="claude").json()["data"]
    assert [(r["period"], r["requests"]) for r in rows] == [("2026-10-06T00:00:00Z", 5)]
    # An end date includes its whole day; a datetime is exclusive.
    assert get(client, end="2026-10-05")["content-type"] == "application/json; charset=utf-8"
    assert get(client, end="2026-10-05").json()["data"][0]["requests"] == 10
    rows = get(client, end="2026-10-05T15:00:00Z").json()["data"]
    assert rows[0]["requests"] == 3


def test_csv_and_ndjson_formats(client, finance_user, billing_usage):
    client.force_login(finance_user)
    response = get(client, group_by="team", format="csv", metrics="requests,cost")
    assert response["X-Schema-Version"] == "1"
    table = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert table[0] == ["team", "team_id", "requests", "cost_usd"]
    assert sorted(row[0] for row in table[1:]) == ["backend", "frontend"]
    response = get(client, group_by="team", format="ndjson")
    lines = b"".join(response.streaming_content).decode().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["requests"] in (5, 10)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"group_by": "team,bogus"}, "unknown dimension 'bogus'"),
        ({"start": "2026-10-10", "end": "2026-10-01"}, "must be before end"),
        ({"tag.": "x"}, "must be 1 to 64 characters"),
        ({"tag.customer_id": ""}, "needs a value"),
        ({"tag.bad\nkey": "x"}, "control character U+000A"),
        ({"tag.customer_id": "nul\x00"}, "control character U+0000"),
        ({"tag.customer_id": "c" * 257}, "at most 256 characters"),
        ({"start": "yesterday"}, "not an ISO date"),
        ({"granularity": "week"}, "granularity"),
        ({"metrics": "joy"}, "unknown joy"),
        ({"status": "teapot"}, "status"),
        ({"team": "no-such-team"}, "unknown team"),
        ({"mode": "rows", "cursor": "garbage"}, "cursor"),
    ],
)
def test_bad_parameters_are_400(client, finance_user, params, message):
    client.force_login(finance_user)
    response = get(client, **params)
    assert response.status_code == 400, response.content
    assert message in response.json()["error"]["message"]


def test_tenant_isolation(client, billing_usage, team, other_team, user, team_admin):
    # Anonymous: 401. A developer reads their own rows (alice made all of frontend's), and
    # may not filter on a team, not even their own.
    assert get(client).status_code == 401
    colleague = factories.make_user("carl", team=team)
    add_usage([usage_row(team_id=team.pk, user_id=colleague.pk, created_at=DAY)])
    client.force_login(user)
    rows = get(client, group_by="team,user").json()["data"]
    assert [(r["team"], r["user"], r["requests"]) for r in rows] == [("frontend", "alice", 10)]
    assert get(client, team="frontend").status_code == 403
    assert get(client, user="carl").status_code == 403
    assert get(client, user="alice").json()["data"][0]["requests"] == 10
    # A team admin sees their team (carl included), and may not ask for another.
    client.force_login(team_admin)
    rows = get(client, group_by="team").json()["data"]
    assert [(r["team"], r["requests"]) for r in rows] == [("frontend", 11)]
    assert get(client, team="backend").status_code == 403
    assert get(client, user="carl").json()["data"][0]["requests"] == 1
    client.logout()

    # An API key with usage:read reads what its owner reads; without the scope: 403.
    _, secret = factories.make_key(user=user, scopes=["usage:read"])
    auth = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
    rows = client.get(URL, {**RANGE, "group_by": "team"}, **auth).json()["data"]
    assert [(r["team"], r["requests"]) for r in rows] == [("frontend", 10)]
    assert client.get(URL, {**RANGE, "team": str(other_team.pk)}, **auth).status_code == 403
    rows = client.get(URL, {"mode": "rows", "limit": 100}, **auth).json()["data"]
    assert {r["user_id"] for r in rows} == {user.pk}
    _, plain = factories.make_key(user=user)
    assert client.get(URL, RANGE, HTTP_AUTHORIZATION=f"Bearer {plain}").status_code == 403
    response = client.get("/api/usage/chargeback.csv", RANGE, **auth)
    body = b"".join(response.streaming_content).decode()
    assert "backend" not in body and "frontend" in body

    # A virtual account's key reads that account's rows.
    bot = factories.make_virtual_account(team, name="bot")
    add_usage([usage_row(team_id=team.pk, virtual_account_id=bot.pk, created_at=DAY)])
    _, bot_secret = factories.make_key(virtual_account=bot, scopes=["usage:read"])
    bot_auth = {"HTTP_AUTHORIZATION": f"Bearer {bot_secret}"}
    rows = client.get(URL, {**RANGE, "group_by": "virtual_account"}, **bot_auth).json()["data"]
    assert [(r["virtual_account"], r["requests"]) for r in rows] == [("bot", 1)]


def test_raw_rows_cursor_pagination_is_exactly_once(client, finance_user, billing_usage, team):
    client.force_login(finance_user)
    seen, cursor, pages = [], None, 0
    while True:
        params = {"mode": "rows", "limit": 4, **({"cursor": cursor} if cursor else {})}
        body = client.get(URL, params).json()
        seen += [row["request_id"] for row in body["data"]]
        cursor, pages = body["next_cursor"], pages + 1
        if not body["has_more"]:
            break
    assert len(seen) == len(set(seen)) == 15 and pages == 4
    row = body["data"][-1]
    assert set(row) >= {"id", "request_id", "inserted_at", "cost_usd", "tags"}

    # A late (spooled) row created on Oct 5 but inserted after the last load: the next load
    # from the saved cursor returns it, once; a row still inside the settle window waits.
    late = usage_row(team_id=team.pk, created_at=dt.datetime(2026, 10, 5, tzinfo=dt.UTC))
    add_usage([late], inserted_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10))
    fresh = usage_row(team_id=team.pk)
    add_usage([fresh])
    body = client.get(URL, {"mode": "rows", "cursor": cursor}).json()
    assert [r["request_id"] for r in body["data"]] == [late.request_id]
    again = client.get(URL, {"mode": "rows", "cursor": body["next_cursor"]}).json()
    assert again["data"] == [] and again["next_cursor"] == body["next_cursor"]

    # updated_since is a strict watermark on inserted_at; CSV carries the cursor in headers.
    response = client.get(
        URL, {"mode": "rows", "format": "csv", "updated_since": "2026-10-06T00:00:00Z"}
    )
    assert response["X-Has-More"] == "false" and response["X-Next-Cursor"]
    lines = b"".join(response.streaming_content).decode().splitlines()
    assert len(lines) == 2 and lines[0].startswith("id,request_id,created_at")


def test_a_key_of_a_deactivated_user_is_refused_like_on_the_gateway(client, billing_usage, user):
    _, secret = factories.make_key(user=user, scopes=["usage:read"])
    auth = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
    assert client.get(URL, RANGE, **auth).status_code == 200
    user.is_active = False
    user.save(update_fields=["is_active"])
    assert client.get(URL, RANGE, **auth).status_code == 401


@pytest.mark.parametrize(
    ("url", "params"),
    [
        (URL, {"format": "csv"}),
        (URL, {"format": "ndjson"}),
        ("/api/usage/chargeback.csv", {}),
    ],
)
def test_streamed_exports_refuse_another_team_before_streaming(
    client, billing_usage, team_admin, url, params
):
    # A streamed body starts after the status line: the scope must be checked before it.
    client.force_login(team_admin)
    assert get(client, url, team="backend", **params).status_code == 403


def test_developer_chargeback_holds_only_their_rows(client, billing_usage, team, user):
    stranger = factories.make_user("dev", team=team, role=Role.DEVELOPER)
    client.force_login(stranger)
    assert _labels(get(client, "/api/usage/chargeback.csv")) == ["TOTAL"]
    client.force_login(user)
    assert _labels(get(client, "/api/usage/chargeback.csv")) == ["frontend", "TOTAL"]


def _labels(response) -> list[str]:
    assert response.status_code == 200
    table = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    return [row[0] for row in table[1:]]


def test_a_user_without_a_role_gets_403(client, billing_usage):
    client.force_login(factories.make_user("nobody"))
    assert get(client).status_code == 403
    assert get(client, "/api/usage/chargeback.csv").status_code == 403
