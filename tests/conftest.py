"""Shared fixtures: tenancy rows and the mode (services or embedded) the suite runs in."""

import os

import pytest

from tests import factories

EMBEDDED = bool(os.environ.get("TOLLGATE_EMBEDDED_TESTS"))


def pytest_collection_modifyitems(config, items):
    if os.environ.get("DATABASE_URL", "").startswith("postgres"):
        return
    # Without the test set-up's services only embedded-mode tests can run.
    skip = pytest.mark.skip(reason="needs PostgreSQL and Redis from `make test`")
    for item in items:
        if "embedded" not in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def team(db):
    return factories.make_team("Frontend", slug="frontend", default_tags={"cost_center": "cc-200"})


@pytest.fixture
def other_team(db):
    return factories.make_team("Backend", slug="backend")


@pytest.fixture
def user(team):
    return factories.make_user("alice", team=team)


@pytest.fixture
def virtual_account(team):
    return factories.make_virtual_account(
        team, name="countdown-bot", default_tags={"feature": "bot"}
    )


@pytest.fixture
def api_key(user):
    """(ApiKey row, plaintext secret)."""
    return factories.make_key(user=user, default_tags={"environment": "test"})
