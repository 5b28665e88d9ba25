"""One usage scope everywhere: each role gets the same ledger rows on every surface.

For each role the same identity reads the dashboards overview (the request count as
rendered), /api/usage (JSON totals and the raw-rows CSV, by session and by its own
`usage:read` key), the chargeback CSV and the quotas page (refusals of an everyone-rule), and
every figure is compared with the ledger rows the rule in `apps.usage.scope` gives that role.
"""

import csv
import datetime as dt
import io
import re

import pytest
import time_machine

from apps.accounts.constants import Role
from apps.accounts.services import membership_set
from apps.quotas.services import quota_config_apply
from apps.usage.models import UsageRecord
from tests import factories
from tests.billing.helpers import add_usage, usage_row

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]

NOW = dt.datetime(2026, 10, 15, 12, 0, tzinfo=dt.UTC)
RULE = "everyone-gpt-test"
QUOTAS = (
    "name: scope-test\ntype: gateway-rate-limiting-config\nrules:\n"
    f"  - id: {RULE}\n    when: {{models: ['gpt-test']}}\n"
    "    limit_to: 100000\n    unit: requests_per_day\n"
)
ROLES = ["admin", "finance", "team_admin", "developer", "no_membership"]


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def frozen():
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def world(frozen, team, other_team):
    """Frontend (A) and backend (B) with rows of every kind of owner.

    The team admin of A is also a developer in B, with rows there: they stay visible to her.
    Each (team, user) group has a distinct size and one quota refusal.
    """
    tara = factories.make_user("tara", team=team, role=Role.TEAM_ADMIN)
    membership_set(user=tara, team=other_team, role=Role.DEVELOPER)
    people = {
        "admin": factories.make_user("adam", team=other_team, role=Role.ADMIN),
        "finance": factories.make_user("fiona", team=other_team, role=Role.FINANCE),
        "team_admin": tara,
        "developer": factories.make_user("dev", team=team, role=Role.DEVELOPER),
        "no_membership": factories.make_user("nobody"),
    }
    carl = factories.make_user("carl", team=team, role=Role.DEVELOPER)
    bob = factories.make_user("bob", team=other_team, role=Role.DEVELOPER)
    bot = factories.make_virtual_account(team, name="bot")
    groups = [
        (team, people["developer"], None, 2),
        (team, tara, None, 3),
        (team, carl, None, 4),
        (other_team, tara, None, 5),
        (other_team, bob, None, 6),
        (team, None, bot, 7),
    ]
    rows = []
    for group_team, person, account, size in groups:
        for i in range(size):
            refused = i == 0
            rows.append(
                usage_row(
                    team_id=group_team.pk,
                    user_id=person.pk if person else None,
                    virtual_account_id=account.pk if account else None,
                    created_at=NOW - dt.timedelta(hours=1),
                    status_code=429 if refused else 200,
                    error_type="quota_exceeded" if refused else "",
                )
            )
    add_usage(rows, inserted_at=NOW - dt.timedelta(hours=1))
    quota_config_apply(yaml_text=QUOTAS)
    return {"people": people, "team": team, "other_team": other_team}


def expected_rows(world, role: str) -> list[UsageRecord] | None:
    """The rule, written out independently of `apps.usage.scope`; None: refused (403)."""
    rows = list(UsageRecord.objects.all())
    me = world["people"][role]
    if role in ("admin", "finance"):
        return rows
    if role == "team_admin":
        return [r for r in rows if r.team_id == world["team"].pk or r.user_id == me.pk]
    if role == "developer":
        return [r for r in rows if r.user_id == me.pk]
    return None


def _body(response) -> str:
    content = b"".join(response.streaming_content) if response.streaming else response.content
    return content.decode()


def dashboards_requests(client, **_):
    response = client.get("/dashboards/")
    if response.status_code != 200:
        return response.status_code
    found = re.search(r"([\d,]+) of ([\d,]+) in range", _body(response))
    return int(found.group(2).replace(",", ""))


def api_json_requests(client, **auth):
    response = client.get("/api/usage/", **auth)
    if response.status_code != 200:
        return response.status_code
    data = response.json()["data"]
    return data[0]["requests"] if data else 0


def api_csv_request_ids(client, **auth):
    response = client.get("/api/usage/", {"mode": "rows", "format": "csv"}, **auth)
    if response.status_code != 200:
        return response.status_code
    return sorted(row["request_id"] for row in csv.DictReader(io.StringIO(_body(response))))


def chargeback_requests(client, **auth):
    response = client.get("/api/usage/chargeback.csv", {"month": "2026-10"}, **auth)
    if response.status_code != 200:
        return response.status_code
    [total] = [
        row for row in csv.DictReader(io.StringIO(_body(response))) if row["team"] == "TOTAL"
    ]
    return int(total["requests"])


def quota_refusals(client, **_):
    response = client.get("/quotas/")
    if response.status_code != 200:
        return response.status_code
    section = _body(response).split(f'id="rule-{RULE}"')[1].split("</h2>")[0]
    found = re.search(r"([\d,]+) refused \(24 h\)", section)
    return int(found.group(1).replace(",", "")) if found else 0


@pytest.mark.parametrize("role", ROLES)
def test_every_surface_shows_the_rows_of_the_role(client, world, role):
    person = world["people"][role]
    rows = expected_rows(world, role)
    client.force_login(person)
    got = {
        "dashboards overview": dashboards_requests(client),
        "/api/usage json": api_json_requests(client),
        "/api/usage rows csv": api_csv_request_ids(client),
        "chargeback csv": chargeback_requests(client),
        "quotas page refusals": quota_refusals(client),
    }
    if rows is None:
        assert got == dict.fromkeys(got, 403)
        return
    assert len(rows) > 0
    refused = sum(1 for r in rows if r.error_type == "quota_exceeded")
    assert got == {
        "dashboards overview": len(rows),
        "/api/usage json": len(rows),
        "/api/usage rows csv": sorted(r.request_id for r in rows),
        "chargeback csv": len(rows),
        "quotas page refusals": refused,
    }

    # The person's own key with `usage:read` reads exactly what their session reads.
    client.logout()
    _, secret = factories.make_key(user=person, scopes=["usage:read"])
    auth = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
    assert api_json_requests(client, **auth) == len(rows)
    assert api_csv_request_ids(client, **auth) == sorted(r.request_id for r in rows)
    assert chargeback_requests(client, **auth) == len(rows)


def test_a_team_outside_the_scope_is_403_on_every_surface(client, world):
    backend = world["other_team"].pk
    for role in ("team_admin", "developer"):
        client.force_login(world["people"][role])
        urls = [
            f"/dashboards/?team={backend}",
            f"/dashboards/cost/?team={backend}",
            f"/dashboards/csv/trend/?team={backend}",
            f"/api/usage/?team={backend}",
            f"/api/usage/?team={backend}&format=csv",
            f"/api/usage/?team={backend}&format=ndjson",
            f"/api/usage/?team={backend}&mode=rows&format=csv",
            f"/api/usage/chargeback.csv?month=2026-10&team={backend}",
        ]
        for url in urls:
            assert client.get(url).status_code == 403, (role, url)
    # Their own team: allowed to its team admin, refused to a developer (own rows only).
    frontend = world["team"].pk
    client.force_login(world["people"]["team_admin"])
    assert client.get(f"/api/usage/?team={frontend}").status_code == 200
    assert client.get(f"/dashboards/?team={frontend}").status_code == 200
    client.force_login(world["people"]["developer"])
    assert client.get(f"/api/usage/?team={frontend}").status_code == 403
    assert client.get(f"/dashboards/?team={frontend}").status_code == 403
