"""Writes and use cases for teams, memberships, virtual accounts and API keys."""

from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from .constants import Role
from .exceptions import OwnerError, TagsError
from .models import ApiKey, Membership, Team, VirtualAccount
from .secrets import NewSecret, generate_secret

User = get_user_model()


def validate_tags(tags: object) -> dict[str, str]:
    if tags is None:
        return {}
    if not isinstance(tags, dict):
        raise TagsError("tags must be a JSON object")
    for key, value in tags.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TagsError("tag keys and values must be strings")
    return dict(tags)


@transaction.atomic
def team_create(*, name: str, slug: str = "", default_tags: dict | None = None) -> Team:
    return Team.objects.create(
        name=name, slug=slug or slugify(name), default_tags=validate_tags(default_tags)
    )


@transaction.atomic
def membership_set(*, user, team: Team, role: str) -> Membership:
    membership, _ = Membership.objects.update_or_create(
        user=user, team=team, defaults={"role": Role(role)}
    )
    return membership


@transaction.atomic
def virtual_account_create(
    *, team: Team, name: str, description: str = "", default_tags: dict | None = None
) -> VirtualAccount:
    return VirtualAccount.objects.create(
        team=team,
        name=name,
        description=description,
        default_tags=validate_tags(default_tags),
    )


@transaction.atomic
def api_key_issue(
    *,
    name: str,
    user=None,
    virtual_account: VirtualAccount | None = None,
    team: Team | None = None,
    default_tags: dict | None = None,
    allowed_models: list[str] | None = None,
    expires_in_days: int | None = None,
    scopes: list[str] | None = None,
) -> tuple[ApiKey, str]:
    """Create a key and return it with its plaintext secret, which is never stored."""
    if (user is None) == (virtual_account is None):
        raise OwnerError("a key is owned by exactly one user or one virtual account")
    if virtual_account is not None:
        team = virtual_account.team
    else:
        memberships = Membership.objects.filter(user=user)
        if team is None:
            first = memberships.select_related("team").order_by("created_at").first()
            if first is None:
                raise OwnerError(f"user {user} belongs to no team")
            team = first.team
        elif not memberships.filter(team=team).exists():
            raise OwnerError(f"user {user} is not a member of team {team}")
    secret: NewSecret = generate_secret(settings.API_KEY_PREFIX)
    expires_at = None
    if expires_in_days is not None:
        expires_at = timezone.now() + timedelta(days=expires_in_days)
    key = ApiKey.objects.create(
        name=name,
        prefix=secret.prefix,
        key_hash=secret.key_hash,
        team=team,
        user=user,
        virtual_account=virtual_account,
        default_tags=validate_tags(default_tags),
        allowed_models=list(allowed_models or []),
        scopes=list(scopes or []),
        expires_at=expires_at,
    )
    return key, secret.plaintext
