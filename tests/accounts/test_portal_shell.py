import pytest
from django.urls import reverse

from apps.accounts.constants import Role
from tests import factories

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


@pytest.fixture
def people(team, other_team):
    return {
        "admin": factories.make_user("boss", team=team, role=Role.ADMIN),
        "finance": factories.make_user("money", team=team, role=Role.FINANCE),
        "team_admin": factories.make_user("lead", team=team, role=Role.TEAM_ADMIN),
        "developer": factories.make_user("coder", team=team, role=Role.DEVELOPER),
    }


def nav_links(html: str) -> set[str]:
    links = set()
    for name in ("keys", "teams"):
        if f'href="{reverse(name)}"' in html:
            links.add(name)
    if 'href="/admin/"' in html:
        links.add("django-admin")
    return links


def test_login_page_renders(client):
    response = client.get("/login/")
    assert response.status_code == 200
    assert b"Log in to Tollgate" in response.content


def test_anonymous_is_sent_to_login(client):
    response = client.get("/")
    assert response.status_code == 302 and response.url.startswith("/login/")


@pytest.mark.parametrize(
    ("who", "expected_nav", "heading"),
    [
        ("admin", {"keys", "teams"}, b"Gateway administration"),
        ("finance", set(), b"Finance"),
        ("team_admin", {"keys", "teams"}, b"Your teams"),
        ("developer", {"keys"}, b"Your keys"),
    ],
)
def test_navigation_and_landing_follow_the_role(client, people, who, expected_nav, heading):
    client.force_login(people[who])
    response = client.get("/")
    html = response.content.decode()
    assert response.status_code == 200
    assert heading in response.content
    assert nav_links(html) == expected_nav


def test_superuser_sees_django_admin_link(client, team):
    root = factories.make_user("root", team=team, role=Role.ADMIN, superuser=True)
    client.force_login(root)
    assert "django-admin" in nav_links(client.get("/").content.decode())


@pytest.mark.parametrize(
    ("who", "page", "status"),
    [
        ("finance", "keys", 403),
        ("developer", "teams", 403),
        ("finance", "teams", 403),
        ("developer", "keys", 200),
        ("team_admin", "teams", 200),
        ("admin", "keys", 200),
    ],
)
def test_pages_refuse_roles_that_may_not_use_them(client, people, who, page, status):
    client.force_login(people[who])
    assert client.get(reverse(page)).status_code == status


def test_developer_sees_only_own_keys(client, people, team):
    mine, _ = factories.make_key(user=people["developer"], name="mine")
    theirs, _ = factories.make_key(user=people["team_admin"], name="theirs")
    client.force_login(people["developer"])
    html = client.get(reverse("keys")).content.decode()
    assert mine.prefix in html and theirs.prefix not in html


def test_team_admin_sees_team_keys_but_not_other_teams(client, people, other_team):
    outsider = factories.make_user("outsider", team=other_team)
    theirs, _ = factories.make_key(user=outsider, name="outside")
    inside, _ = factories.make_key(user=people["developer"], name="inside")
    client.force_login(people["team_admin"])
    html = client.get(reverse("keys")).content.decode()
    assert inside.prefix in html and theirs.prefix not in html


def test_login_and_logout_flow(client, people):
    response = client.post("/login/", {"username": "coder", "password": "pw-for-tests-123"})
    assert response.status_code == 302
    assert client.get("/").status_code == 200
    client.post("/logout/")
    assert client.get("/").status_code == 302
