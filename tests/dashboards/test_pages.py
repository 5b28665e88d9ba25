"""Pages and chart CSV over HTTP: every role gets its scope, tag values stay escaped."""

import csv
import io

import pytest

from apps.dashboards.datasets import DATASETS

from .conftest import DAY1, DAY2, EVIL, PASSWORD

pytestmark = [pytest.mark.embedded, pytest.mark.django_db]

RANGE = f"start={DAY1}&end={DAY2}"
PAGES = [
    f"/dashboards/?{RANGE}",
    f"/dashboards/cost/?{RANGE}&group=tag:feature",
    f"/dashboards/latency/?{RANGE}",
    f"/dashboards/errors/?{RANGE}",
    f"/dashboards/tags/?{RANGE}&key=feature",
    f"/dashboards/tags/?{RANGE}&key=feature&value=%3Cscript%3Ealert(1)%3C/script%3E",
    f"/dashboards/cost/?{RANGE}&tag=feature%3D%3Cscript%3Ealert(1)%3C/script%3E",
]


def login(client, user):
    assert client.login(username=user.username, password=PASSWORD)
    return client


def read_csv(response) -> list[dict]:
    assert response["Content-Type"].startswith("text/csv")
    text = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.parametrize("url", PAGES)
def test_tag_value_is_escaped_on_every_page(client, world, url):
    response = login(client, world["fiona"]).get(url)
    assert response.status_code == 200
    body = response.content.decode()
    assert EVIL not in body
    if "/cost/" in url or "/tags/" in url:
        # Autoescaped in HTML (tables, the active tag filter).
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    if "group=tag:feature" in url or "key=feature" in url:
        # In figure JSON: escaped for plotly, then json_script escapes the & again.
        assert "\\u0026lt;script\\u0026gt;" in body


def test_pages_need_login(client, world):
    response = client.get("/dashboards/")
    assert response.status_code == 302


@pytest.mark.parametrize("username", ["alice", "tina", "bob", "fiona"])
def test_every_role_can_open_every_page(client, world, username):
    login(client, world[username])
    for url in PAGES:
        assert client.get(url).status_code == 200, url


def test_overview_kpis_follow_scope(client, world):
    alice = login(client, world["alice"]).get(f"/dashboards/?{RANGE}")
    assert alice.context["kpis"].period.requests == 5
    client.logout()
    fiona = login(client, world["fiona"]).get(f"/dashboards/?{RANGE}")
    assert fiona.context["kpis"].period.requests == 8


def test_team_admin_cannot_see_another_teams_users(client, world):
    response = login(client, world["tina"]).get(f"/dashboards/cost/?{RANGE}&group=user")
    groups = {row.group for row in response.context["totals"]}
    assert groups == {"alice", "tina"}
    rows = read_csv(client.get(f"/dashboards/csv/cost/?{RANGE}&group=user"))
    assert {r["group"] for r in rows} == {"alice", "tina"}


def test_developer_sees_only_their_own_usage(client, world):
    login(client, world["alice"])
    rows = read_csv(client.get(f"/dashboards/csv/cost/?{RANGE}&group=user"))
    assert {r["group"] for r in rows} == {"alice"}
    # A team filter outside the scope is refused (403, as on /api/usage), never widened.
    url = f"/dashboards/csv/trend/?{RANGE}&team={world['backend'].pk}"
    assert client.get(url).status_code == 403
    assert client.get(f"/dashboards/?{RANGE}&team={world['backend'].pk}").status_code == 403


def test_chart_csv_has_the_chart_numbers(client, world):
    login(client, world["fiona"])
    # Three days: bucketed by day (two days or fewer are hourly).
    rows = read_csv(client.get(f"/dashboards/csv/trend/?start={DAY1}&end=2025-03-12"))
    assert [(r["bucket"][:10], r["requests"], r["errors"], r["cost_usd"]) for r in rows] == [
        (str(DAY1), "5", "1", "0.0100000000"),
        (str(DAY2), "3", "1", "0.5100000000"),
    ]
    ranking = read_csv(client.get(f"/dashboards/csv/tag_ranking/?{RANGE}&key=feature"))
    assert ranking[0]["group"] == "search"
    assert ranking[0]["requests"] == "4"
    assert EVIL in {r["group"] for r in ranking}
    pct = read_csv(client.get(f"/dashboards/csv/latency_table_model/?{RANGE}"))
    assert {r["group"]: float(r["p90_ms"]) for r in pct}["gpt-a"] == pytest.approx(360)


def test_every_dataset_has_a_csv(client, world):
    login(client, world["fiona"])
    for name in DATASETS:
        url = f"/dashboards/csv/{name}/?{RANGE}&key=feature&value=search"
        response = client.get(url)
        assert response.status_code == 200, name
        assert read_csv(response) is not None
    assert client.get("/dashboards/csv/nope/").status_code == 404


def test_csv_neutralises_spreadsheet_formulas(client, world):
    from .conftest import at, usage

    usage(created_at=at(DAY1, 14), team_id=world["frontend"].pk, user_id=world["alice"].pk,
          tags={"feature": "=HYPERLINK(\"http://x\")"})  # fmt: skip
    login(client, world["fiona"])
    rows = read_csv(client.get(f"/dashboards/csv/tag_ranking/?{RANGE}&key=feature"))
    assert '\'=HYPERLINK("http://x")' in {r["group"] for r in rows}


def test_invalid_filters_fall_back_and_say_so(client, world):
    login(client, world["fiona"])
    response = client.get("/dashboards/?start=2025-03-11&end=2025-03-01&tag=nonsense")
    assert response.status_code == 200
    body = response.content.decode()
    assert "The end is before the start." in body
    assert "key=value" in body


def test_pages_load_plotly_locally(client, world):
    body = login(client, world["fiona"]).get(f"/dashboards/?{RANGE}").content.decode()
    assert "/static/vendor/plotly.min.js" in body
    assert "cdn" not in body.lower()
