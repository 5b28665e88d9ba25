"""Helpers shared by the accounts services: validation and snapshots for the audit log."""

from django.db import transaction

from apps.proxy.key_events import publish_invalidation
from apps.usage.regions import region_or_default
from apps.usage.tags import tag_key_problem, tags_problem

from ..exceptions import TagsError
from ..models import ApiKey, Membership, Team, VirtualAccount


def validate_tags(tags: object) -> dict[str, str]:
    """Default tags (team, virtual account, key): the same rule as the metadata header."""
    if tags is None:
        return {}
    if not isinstance(tags, dict):
        raise TagsError("tags must be a JSON object")
    problem = tags_problem(tags)
    if problem:
        raise TagsError(problem)
    return dict(tags)


def validate_tag_keys(keys: object, *, what: str = "tag keys") -> list[str]:
    if keys is None:
        return []
    if isinstance(keys, str) or not isinstance(keys, list | tuple | set | frozenset):
        raise TagsError(f"{what} must be a list of strings")
    cleaned: list[str] = []
    for key in keys:
        if not isinstance(key, str) or not key.strip():
            raise TagsError(f"{what} must be non-empty strings")
        key = key.strip()
        problem = tag_key_problem(key)
        if problem:
            raise TagsError(problem)
        if key not in cleaned:
            cleaned.append(key)
    return cleaned


def validate_names(names: object, *, what: str) -> list[str]:
    if names is None:
        return []
    if isinstance(names, str) or not isinstance(names, list | tuple | set | frozenset):
        raise TagsError(f"{what} must be a list of strings")
    if not all(isinstance(name, str) and name.strip() for name in names):
        raise TagsError(f"{what} must be non-empty strings")
    return list(dict.fromkeys(name.strip() for name in names))


def invalidate_after_commit(*, key_hashes: list[str] = (), team_id: int | None = None) -> None:
    """Workers drop their cached copies once the change is visible to their re-read."""
    hashes = list(key_hashes)
    transaction.on_commit(lambda: publish_invalidation(key_hashes=hashes, team_id=team_id))


def iso(moment) -> str | None:
    return moment.isoformat() if moment is not None else None


def key_snapshot(key: ApiKey) -> dict:
    """What an auditor needs about a key; never its hash or secret."""
    return {
        "name": key.name,
        "prefix": key.prefix,
        "team": key.team.slug,
        "owner": key.owner_label,
        "lineage_id": str(key.lineage_id),
        "rotated_from": key.rotated_from.prefix if key.rotated_from_id else None,
        "default_tags": dict(key.default_tags or {}),
        "enforced_tag_keys": list(key.enforced_tag_keys or []),
        "allowed_models": list(key.allowed_models or []),
        "scopes": list(key.scopes or []),
        "expires_at": iso(key.expires_at),
        "revoked_at": iso(key.revoked_at),
    }


def team_snapshot(team: Team) -> dict:
    return {
        "name": team.name,
        "slug": team.slug,
        "default_tags": dict(team.default_tags or {}),
        "allow_request_logging": team.allow_request_logging,
        "required_tag_keys": list(team.required_tag_keys or []),
        "data_region": region_or_default(team.data_region),
    }


def membership_snapshot(membership: Membership) -> dict:
    return {
        "user": membership.user.get_username(),
        "team": membership.team.slug,
        "role": membership.role,
    }


def virtual_account_snapshot(va: VirtualAccount) -> dict:
    return {
        "name": va.name,
        "team": va.team.slug,
        "description": va.description,
        "default_tags": dict(va.default_tags or {}),
        "is_active": va.is_active,
    }
