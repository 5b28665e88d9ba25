"""/api/usage raw-rows cursors are signed and bound to the caller's scope and the row filters:
the same caller resumes, another team, other filters or an altered cursor get a 400."""

import base64
import json

import pytest
from django.core import signing

from apps.accounts.constants import Role
from apps.billing.selectors.usage import CURSOR_SALT
from tests import factories
from tests.billing.conftest import LONG_AGO
from tests.billing.helpers import add_usage, usage_row

pytestmark = pytest.mark.django_db

URL = "/api/usage/"


@pytest.fixture
def admins(team, other_team):
    """A team admin of each team, each team with 6 rows of its own."""
    add_usage(
        [usage_row(team_id=t.pk, model=f"m{i % 2}") for t in (team, other_team) for i in range(6)],
        inserted_at=LONG_AGO,
    )
    return {
        "a": factories.make_user("ann", team=team, role=Role.TEAM_ADMIN),
        "b": factories.make_user("bob", team=other_team, role=Role.TEAM_ADMIN),
    }


def rows(client, headers: dict | None = None, **params):
    return client.get(URL, {"mode": "rows", "limit": 2, **params}, headers=headers)


def refused(response, words: str) -> None:
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["message"].startswith("cursor: ") and words in error["message"]


def test_the_same_caller_resumes_with_every_cursor(client, admins):
    client.force_login(admins["a"])
    first = rows(client).json()
    seen, cursor = [r["id"] for r in first["data"]], first["next_cursor"]
    while cursor:
        body = rows(client, cursor=cursor).json()
        seen += [r["id"] for r in body["data"]]
        cursor = body["next_cursor"] if body["has_more"] else None
    assert len(seen) == len(set(seen)) == 6
    # A CSV page resumes the JSON page's cursor (the format does not choose rows).
    response = rows(client, cursor=first["next_cursor"], format="csv", limit=10)
    assert response.status_code == 200 and response["X-Next-Cursor"]
    # The owner's API key acts in the owner's scope: it resumes the portal's cursor too.
    _, secret = factories.make_key(user=admins["a"], scopes=["usage:read"])
    client.logout()
    by_key = rows(client, {"Authorization": f"Bearer {secret}"}, cursor=first["next_cursor"])
    assert by_key.status_code == 200, by_key.content
    assert [r["id"] for r in by_key.json()["data"]] == seen[2:4]


def test_another_teams_cursor_is_refused(client, admins, other_team):
    client.force_login(admins["a"])
    cursor = rows(client).json()["next_cursor"]
    client.force_login(admins["b"])
    refused(rows(client, cursor=cursor), "another caller or to other filters")
    # Bob's own export works, and his cursor is refused to Ann in turn.
    body = rows(client).json()
    assert {r["team_id"] for r in body["data"]} == {other_team.pk}
    client.force_login(admins["a"])
    refused(rows(client, cursor=body["next_cursor"]), "another caller")


def test_a_cursor_under_other_filters_is_refused(client, admins):
    client.force_login(admins["a"])
    cursor = rows(client, model="m0").json()["next_cursor"]
    assert rows(client, model="m0", cursor=cursor).status_code == 200
    refused(rows(client, model="m1", cursor=cursor), "other filters")
    refused(rows(client, cursor=cursor), "other filters")
    refused(rows(client, model="m0", start="2026-10-01", cursor=cursor), "other filters")


def test_an_altered_or_unsigned_cursor_is_refused(client, admins):
    client.force_login(admins["a"])
    cursor = rows(client).json()["next_cursor"]
    payload, signature = cursor.rsplit(":", 1)
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert set(data) == {"p", "b"}  # a position per data region, and the binding
    # Same signature, position moved back to the start.
    ((region, (moment, _)),) = data["p"].items()
    back = {**data, "p": {region: [moment, 0]}}
    moved = signing.b64_encode(json.dumps(back, separators=(",", ":")).encode())
    refused(rows(client, cursor=f"{moved.decode()}:{signature}"), "not a cursor returned")
    # Same payload, signed for another purpose; the old unsigned form; a truncated one.
    other_salt = signing.Signer(salt="something-else").sign_object(data)
    unsigned = base64.urlsafe_b64encode(json.dumps({"p": back["p"]}).encode()).decode()
    for bad in (other_salt, unsigned, cursor[:-3]):
        refused(rows(client, cursor=bad), "not a cursor returned")
    assert rows(client, cursor=cursor).status_code == 200
    # A cursor handed out before data regions (one position) still resumes, in the default.
    legacy = signing.Signer(salt=CURSOR_SALT).sign_object(
        {"i": moment, "id": data["p"][region][1], "b": data["b"]}
    )
    assert rows(client, cursor=legacy).json()["data"] == rows(client, cursor=cursor).json()["data"]
