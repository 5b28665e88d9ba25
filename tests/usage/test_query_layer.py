"""The usage API reads through the one query layer: rollups answer whole past days, raw rows
the rest, and the API's bodies are the same whether or not a rollup has run.

The first test reads the API before rolling up, rolls up, then deletes the rolled-up raw
rows: whatever still answers for those days can only come from the rollups. The second keeps
the raw rows and reads ranges that cut days in half and reach into today, where a rollup
must never be counted beside the raw rows it summed.
"""

import datetime as dt

import pytest

from apps.dashboards.services import usage_generate
from apps.usage.models import UsageRecord
from apps.usage.rollup_tables import rollup_days
from apps.usage.rollups import usage_rollups_refresh
from tests import factories

pytestmark = [pytest.mark.embedded, pytest.mark.django_db]

DAYS = 6

# Reads the rollups can answer: column groupings (the cube), one rollup tag grouped by or
# filtered on (the tag rollup), by day, by month or in total.
# Latency percentiles are exact, from raw rows: these reads leave them out.
SUMS = {"metrics": "requests,tokens,cost,error_rate"}
WHOLE_DAY_READS = [
    {"group_by": "team,model", "granularity": "day", **SUMS},
    {"group_by": "user,virtual_account,provider", **SUMS},
    {"group_by": "tag.customer_id", "granularity": "month", **SUMS},
    {"group_by": "virtual_account,tag.feature", "granularity": "day", **SUMS},
    {"group_by": "user", "tag.feature": "search", **SUMS},
    {"granularity": "day", **SUMS},
]
# Reads served from raw rows whatever has run (status, latency), or from raw rows but for
# today's hourly rollups (hourly buckets).
RAW_ONLY_READS = [
    {"group_by": "status", "granularity": "day"},
    {"group_by": "model", "status": "error"},
    {"group_by": "team"},  # every metric: latency percentiles too
    {"group_by": "team", "granularity": "hour"},
]


@pytest.fixture
def history(team, other_team, user, virtual_account, client):
    factories.make_key(user=user)
    factories.make_key(user=factories.make_user("bob", team=other_team))
    usage_generate(rows=3000, days=DAYS, seed=11)
    admin = factories.make_user("root", team=team, role="admin")
    client.force_login(admin)
    return client


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def _body(client, params: dict) -> list[dict]:
    response = client.get("/api/usage/", params)
    assert response.status_code == 200, response.content
    return response.json()["data"]


def _csv(client, path: str, params: dict) -> bytes:
    response = client.get(path, params)
    assert response.status_code == 200
    return b"".join(response.streaming_content)


def test_rollups_answer_the_usage_api_for_whole_past_days(history):
    days = {"start": (_today() - dt.timedelta(days=DAYS)).isoformat()}
    days["end"] = (_today() - dt.timedelta(days=1)).isoformat()  # inclusive: up to today
    reads = [{**days, **read} for read in WHOLE_DAY_READS]
    before = [_body(history, read) for read in reads]
    assert all(before)
    month = {"month": _today().strftime("%Y-%m"), "group_by": "team,tag.customer_id"}
    chargeback_before = _csv(history, "/api/usage/chargeback.csv", month)

    rollup_days(start=_today() - dt.timedelta(days=DAYS), end=_today())
    yesterday_end = dt.datetime.combine(_today(), dt.time.min, tzinfo=dt.UTC)
    raw_today = UsageRecord.objects.filter(created_at__gte=yesterday_end).count()
    deleted, _ = UsageRecord.objects.filter(created_at__lt=yesterday_end).delete()
    assert deleted > 0

    for read, want in zip(reads, before, strict=True):
        assert _body(history, read) == want, read
    # Asked for, percentiles come from the raw rows: none are left for those days, and the
    # sums stay.
    [everyone] = _body(history, days)
    assert everyone["requests"] == sum(row["requests"] for row in before[-1])
    assert everyone["latency_p50_ms"] is None
    # The month's chargeback: its past days from the rollups, today from the raw rows.
    assert raw_today == UsageRecord.objects.count()
    if _today().day > 1 and raw_today:
        assert _csv(history, "/api/usage/chargeback.csv", month) == chargeback_before


def test_a_rollup_is_never_counted_beside_the_rows_it_summed(history):
    now = dt.datetime.now(dt.UTC)
    ranges = [
        # Half of the first day, whole days, and today up to now.
        {"start": (now - dt.timedelta(days=DAYS - 0.5)).isoformat(), "end": now.isoformat()},
        # Whole days ending in the middle of yesterday.
        {
            "start": (_today() - dt.timedelta(days=DAYS)).isoformat(),
            "end": (now - dt.timedelta(days=1, hours=now.hour / 2)).isoformat(),
        },
    ]
    reads = [{**r, **read} for r in ranges for read in [*WHOLE_DAY_READS, *RAW_ONLY_READS]]
    before = [_body(history, read) for read in reads]
    assert all(before)

    # The scheduled run: whole past days, and today's hours up to the settle margin.
    usage_rollups_refresh(recent_days=DAYS + 1)
    for read, want in zip(reads, before, strict=True):
        assert _body(history, read) == want, read
