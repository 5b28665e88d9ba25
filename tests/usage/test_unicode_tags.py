"""Tags in any script, with any punctuation, come back unchanged on every surface.

Tag keys are any text but control characters (`apps.usage.tags`), so a key like `équipe`,
`ключ`, `q"uote`, `a.b`, `$`, `0` or `contains` must filter and group on the usage API (JSON,
NDJSON and CSV, aggregated and raw rows), the chargeback CSV, the dashboards (tag filter,
breakdown, tag explorer and its CSV) and the tag glossary, on PostgreSQL and on SQLite.
Every key reaches SQL as a bound parameter: Django's own JSON key lookups would read "0" as
an array index, take "contains" or "a__b" for lookups, and on SQLite miss a key holding `"`.

The first tests send their rows through a real gateway; the rollup test writes past days
through the ORM and rolls them up, since rollups only cover finished days.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import time
from decimal import Decimal
from urllib.parse import quote, urlencode

import httpx
import pytest
from django.test import Client
from django.utils import timezone

from apps.accounts.constants import Role
from apps.accounts.models import TagDefinition
from apps.usage.models import TagUsageDaily, UsageRecord
from apps.usage.month_to_date import UsageSubject, month_to_date, month_to_date_rows
from apps.usage.rollups import usage_rollup_day
from tests import factories
from tests.proxy.conftest import start_gateway, stop_gateway
from tests.proxy.helpers import declare_model

pytestmark = [pytest.mark.embedded, pytest.mark.django_db(transaction=True)]

# One value per key, the same on every row; `équipe` differs between the two requests.
TAGS = {
    "équipe": "🙂",
    "ключ": "значение",
    "a.b": "x",
    'q"uote': 'it\'s "quoted"',
    "$": "dollar",
    "back\\slash": "b\\s",
    "sp ace": "s p",
    "0": "zero",
    "contains": "c",
    "a__b": "u",
    "emoji 🙂 key": "✓",
}
OTHER_TEAM = {**TAGS, "équipe": "🙃"}
PRICES = {"input_cost_per_token": "0.000002", "output_cost_per_token": "0.000008"}


@pytest.fixture(scope="module")
def gateway(django_db_setup, django_db_blocker):
    server = start_gateway()
    yield server
    stop_gateway(server)
    with django_db_blocker.unblock():
        UsageRecord.objects.all().delete()


def _today() -> dt.date:
    return timezone.now().astimezone(dt.UTC).date()


def _range() -> dict[str, str]:
    """Yesterday to today (an end date includes its whole day) around rows sent now."""
    today = _today()
    return {"start": (today - dt.timedelta(days=1)).isoformat(), "end": today.isoformat()}


@pytest.fixture
def sent(gateway):
    """Two requests through the real gateway: one header as raw UTF-8, one \\u-escaped."""
    team = factories.make_team("Frontend", slug="frontend")
    admin = factories.make_user("ada", team=team, role=Role.ADMIN)
    _, secret = factories.make_key(user=admin)
    declare_model("uni-chat", gateway.simulator_url, "demo-chat", prices=PRICES)
    gateway.wait_for_model(secret, "uni-chat")
    ids = []
    for header in (
        json.dumps(TAGS, ensure_ascii=False).encode(),
        json.dumps(OTHER_TEAM).encode(),
    ):
        response = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json={"model": "uni-chat", "messages": [{"role": "user", "content": "Bonjour"}]},
            headers={"Authorization": f"Bearer {secret}", "X-Gateway-Metadata": header},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        ids.append(response.headers["x-request-id"])
    deadline = time.monotonic() + 20
    while UsageRecord.objects.filter(request_id__in=ids).count() < 2:
        assert time.monotonic() < deadline, "usage rows missing"
        time.sleep(0.1)
    rows = {row.request_id: row.tags for row in UsageRecord.objects.filter(request_id__in=ids)}
    assert [rows[ids[0]][k] for k in TAGS] == list(TAGS.values())
    assert [rows[ids[1]][k] for k in OTHER_TEAM] == list(OTHER_TEAM.values())
    client = Client()
    client.force_login(admin)
    return client


def _body(response) -> bytes:
    assert response.status_code == 200, response.content[:500]
    if response.streaming:
        return b"".join(response.streaming_content)
    return response.content


def _api(client: Client, **params) -> bytes:
    return _body(client.get("/api/usage/", {**_range(), **params}))


def test_usage_api_filters_and_groups_by_every_key(sent):
    for key, value in TAGS.items():
        if key == "équipe":
            continue
        [total] = json.loads(_api(sent, **{f"tag.{key}": value}))["data"]
        assert total["requests"] == 2, key
        [group] = json.loads(_api(sent, group_by=f"tag.{key}"))["data"]
        assert (group[f"tag.{key}"], group["requests"]) == (value, 2), key

    # Percent-encoded by hand, as a browser or curl sends it.
    url = f"/api/usage/?{urlencode({**_range(), 'tag.équipe': '🙂'})}"
    assert "tag.%C3%A9quipe=%F0%9F%99%82" in url
    [total] = json.loads(_body(sent.get(url)))["data"]
    assert total["requests"] == 1

    raw = _api(sent, group_by="tag.équipe")
    # Real UTF-8 in the JSON body, not \u escapes.
    assert "équipe".encode() in raw and "🙂".encode() in raw and b"\\u" not in raw
    body = json.loads(raw)
    assert body["group_by"] == ["tag.équipe"]
    assert {row["tag.équipe"]: row["requests"] for row in body["data"]} == {"🙂": 1, "🙃": 1}


def test_usage_api_ndjson_and_csv_are_utf8(sent):
    raw = _api(sent, group_by='tag.équipe,tag.q"uote', format="ndjson")
    text = raw.decode("utf-8")
    assert "équipe" in text and "🙃" in text and "\\u" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert sorted((r["tag.équipe"], r['tag.q"uote'], r["requests"]) for r in lines) == [
        ("🙂", TAGS['q"uote'], 1),
        ("🙃", TAGS['q"uote'], 1),
    ]

    raw = _api(sent, group_by="tag.équipe,tag.ключ", format="csv", metrics="requests")
    assert "équipe".encode() in raw and "значение".encode() in raw
    table = list(csv.DictReader(io.StringIO(raw.decode("utf-8"))))
    assert sorted((r["tag.équipe"], r["tag.ключ"], r["requests"]) for r in table) == [
        ("🙂", "значение", "1"),
        ("🙃", "значение", "1"),
    ]


def test_raw_rows_export_keeps_tags_as_utf8(sent, settings):
    settings.BILLING_EXPORT_SETTLE_SECONDS = 0
    body = json.loads(_api(sent, mode="rows", **{"tag.équipe": "🙃"}))
    assert [row["tags"]["équipe"] for row in body["data"]] == ["🙃"]
    assert body["data"][0]["tags"]['q"uote'] == TAGS['q"uote']

    text = _api(sent, mode="rows", format="ndjson").decode("utf-8")
    assert '"équipe": "🙂"' in text
    assert sorted(json.loads(line)["tags"]["équipe"] for line in text.splitlines()) == ["🙂", "🙃"]

    text = _api(sent, mode="rows", format="csv").decode("utf-8")
    assert '"équipe": "🙂"' in text.replace('""', '"')
    cells = [json.loads(row["tags"]) for row in csv.DictReader(io.StringIO(text))]
    assert sorted(tags["équipe"] for tags in cells) == ["🙂", "🙃"]
    assert all(tags["ключ"] == "значение" and tags["0"] == "zero" for tags in cells)


def test_chargeback_csv_groups_by_a_unicode_key(sent):
    response = sent.get(
        "/api/usage/chargeback.csv", {**_range(), "group_by": "tag.équipe", "tag.ключ": "значение"}
    )
    raw = _body(response)
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert "équipe".encode() in raw and "🙂".encode() in raw
    assert not raw.startswith(b"\xef\xbb\xbf")  # no byte-order mark (see csv_stream)
    *groups, total = csv.DictReader(io.StringIO(raw.decode("utf-8")))
    assert sorted((r["tag.équipe"], r["requests"]) for r in groups) == [("🙂", "1"), ("🙃", "1")]
    assert (total["tag.équipe"], total["requests"]) == ("TOTAL", "2")
    costs = [Decimal(r["cost_usd"]) for r in groups]
    assert all(cost > 0 for cost in costs) and sum(costs) == Decimal(total["cost_usd"])


def _dashboard(client: Client, page: str, **params):
    response = client.get(f"/dashboards/{page}", {**_range(), **params})
    assert response.status_code == 200, response.content[:500]
    return response


def test_dashboards_filter_and_group_by_unicode_keys(sent):
    response = _dashboard(sent, "cost/", tag="équipe=🙂")
    assert not response.context["form"].errors
    assert response.context["filters"].tags == (("équipe", "🙂"),)
    assert sum(row.requests for row in response.context["totals"]) == 1
    body = response.content.decode()
    assert "<code>équipe=🙂</code>" in body
    # The tabs carry the filter to the other pages, percent-encoded.
    assert f"tag={quote('équipe=🙂', safe='')}" in body

    for key, value in OTHER_TEAM.items():
        if key == "équipe":
            continue
        response = _dashboard(sent, "cost/", tag=f"{key}={value}")
        assert not response.context["form"].errors, key
        assert sum(row.requests for row in response.context["totals"]) == 2, key

    response = _dashboard(sent, "cost/", group="tag:équipe")
    assert {row.group: row.requests for row in response.context["totals"]} == {"🙂": 1, "🙃": 1}
    assert "🙃" in response.content.decode()
    response = _dashboard(sent, "cost/", group='tag:q"uote')
    assert [(row.group, row.requests) for row in response.context["totals"]] == [
        (TAGS['q"uote'], 2)
    ]


def test_tag_explorer_ranks_and_drills_into_a_unicode_key(sent):
    response = _dashboard(sent, "tags/", key="équipe")
    assert {row.group: row.requests for row in response.context["ranking"]} == {"🙂": 1, "🙃": 1}
    body = response.content.decode()
    assert '<option value="équipe" selected>' in body
    assert '<option value="q&quot;uote">' in body
    drill = f"key={quote('équipe')}&amp;value={quote('🙂', safe='')}"
    assert drill in body

    response = _dashboard(sent, "tags/", key="équipe", value="🙂")
    assert "<strong>🙂</strong>" in response.content.decode()
    assert sum(point.requests for point in response.context["drill_models"]) == 1

    raw = _body(sent.get("/dashboards/csv/tag_ranking/", {**_range(), "key": "équipe"}))
    ranking = list(csv.DictReader(io.StringIO(raw.decode("utf-8"))))
    assert sorted((r["group"], r["requests"]) for r in ranking) == [("🙂", "1"), ("🙃", "1")]


def test_tag_glossary_lists_defines_and_links_unicode_keys(sent):
    page = _body(sent.get("/tags/")).decode()
    for key in ("équipe", "ключ", "emoji 🙂 key", "back\\slash"):
        assert f"<code>{key}</code>" in page, key
    assert "<code>q&quot;uote</code>" in page
    assert f'href="?key={quote("équipe")}#tag-form"' in page

    edit = _body(sent.get("/tags/", {"key": "équipe"})).decode()
    assert 'value="équipe"' in edit
    response = sent.post("/tags/", {"key": "équipe", "description": "L'équipe qui paie"})
    assert response.status_code == 302
    assert TagDefinition.objects.get(key="équipe").description == "L'équipe qui paie"
    assert "L&#x27;équipe qui paie" in _body(sent.get("/tags/")).decode()
    # A defined key groups on /api/usage without the `tag.` prefix.
    body = json.loads(_api(sent, group_by="équipe"))
    assert {row["tag.équipe"]: row["requests"] for row in body["data"]} == {"🙂": 1, "🙃": 1}


ROLLUP_KEYS = ["équipe", 'q"uote', "0", "contains"]


def test_rollups_keep_unicode_keys_apart(settings):
    settings.BILLING_ROLLUP_TAG_KEYS = ROLLUP_KEYS
    team = factories.make_team("Rolled", slug="rolled")
    admin = factories.make_user("roland", team=team, role=Role.ADMIN)
    day = _today() - dt.timedelta(days=3)
    moment = dt.datetime.combine(day, dt.time(12), tzinfo=dt.UTC)
    for i, tags in enumerate((TAGS, OTHER_TEAM, OTHER_TEAM)):
        UsageRecord.objects.create(
            request_id=f"req_rollup_{i}",
            created_at=moment,
            team_id=team.pk,
            user_id=admin.pk,
            model="m",
            request_type="chat",
            status_code=200,
            input_tokens=10,
            output_tokens=5,
            cost_usd=Decimal("0.01"),
            tags=tags,
        )
    usage_rollup_day(day=day)
    # The customer tag key is always a rollup key too.
    assert set(TagUsageDaily.objects.values_list("tag_key", flat=True)) == {
        *ROLLUP_KEYS,
        settings.BILLING_CUSTOMER_TAG_KEY,
    }
    assert dict(
        TagUsageDaily.objects.filter(tag_key="équipe").values_list("tag_value", "requests")
    ) == {"🙂": 1, "🙃": 2}

    month = day.replace(day=1)
    for key, value, requests in [("équipe", "🙃", 2), ('q"uote', TAGS['q"uote'], 3),
                                 ("0", "zero", 3), ("contains", "c", 3)]:  # fmt: skip
        totals = month_to_date(subject=UsageSubject(tags=((key, value),)), month=month)
        assert totals.requests == requests, key
    per_value: dict[str, int] = {}
    for row in month_to_date_rows(month=month, tag_key="équipe"):
        if row.day == day:
            per_value[row.dims["équipe"]] = per_value.get(row.dims["équipe"], 0) + row.requests
    assert per_value == {"🙂": 1, "🙃": 2}
    zero = [row.dims for row in month_to_date_rows(month=month, tag_key="0") if row.day == day]
    assert zero and all(dims == {"0": "zero"} for dims in zero)

    client = Client()
    client.force_login(admin)
    # Three days: bucketed by day, so the breakdown by a rollup key reads TagUsageDaily.
    start = day - dt.timedelta(days=2)
    response = client.get(
        "/dashboards/cost/", {"start": start.isoformat(), "end": day.isoformat(), "group": "tag:0"}
    )
    assert response.status_code == 200
    assert [(row.group, row.requests) for row in response.context["totals"]] == [("zero", 3)]
