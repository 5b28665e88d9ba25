"""Small factories for tenancy rows; services do the real work so tests use real paths."""

import itertools

from django.contrib.auth import get_user_model

from apps.accounts.constants import Role
from apps.accounts.models import Team, VirtualAccount
from apps.accounts.services import (
    api_key_issue,
    membership_set,
    team_create,
    virtual_account_create,
)

_seq = itertools.count(1)


def make_team(name: str | None = None, **kwargs) -> Team:
    n = next(_seq)
    return team_create(name=name or f"Team {n}", slug=kwargs.pop("slug", f"team-{n}"), **kwargs)


def make_user(
    username: str | None = None,
    *,
    team: Team | None = None,
    role: str = Role.DEVELOPER,
    password: str = "pw-for-tests-123",
    superuser: bool = False,
):
    n = next(_seq)
    username = username or f"user{n}"
    user = get_user_model().objects.create_user(
        username=username,
        email=f"{username}@example.com",
        password=password,
        is_superuser=superuser,
        is_staff=superuser,
    )
    if team is not None:
        membership_set(user=user, team=team, role=role)
    return user


def make_virtual_account(team: Team, name: str | None = None, **kwargs) -> VirtualAccount:
    return virtual_account_create(team=team, name=name or f"va-{next(_seq)}", **kwargs)


def make_key(*, user=None, virtual_account=None, **kwargs):
    return api_key_issue(
        name=kwargs.pop("name", "test key"), user=user, virtual_account=virtual_account, **kwargs
    )
