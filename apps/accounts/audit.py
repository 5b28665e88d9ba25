"""The governance audit log: one append-only row per action, written by the services.

Rows are never edited: there is no service to change one, and the admin refuses changes
and deletions. `before`/`after` hold small snapshots of the fields that matter, never a
secret or a key hash.
"""

from typing import Any

from django.db import models

from .models import AuditLog, Team


class AuditAction:
    """Action names, `<object>.<verb>`. Other apps may record their own (quota_config.applied)."""

    KEY_CREATED = "key.created"
    KEY_ROTATED = "key.rotated"
    KEY_REVOKED = "key.revoked"
    KEY_UPDATED = "key.updated"
    KEY_EXPIRED = "key.expired"
    KEY_SECRET_REVEALED = "key.secret_revealed"  # noqa: S105 (an action name, not a secret)
    MEMBERSHIP_SET = "membership.set"
    MEMBERSHIP_REMOVED = "membership.removed"
    TEAM_CREATED = "team.created"
    TEAM_UPDATED = "team.updated"
    TEAM_REGION_CHANGED = "team.region_changed"
    CUSTOMER_REGION_SET = "customer_region.set"
    VIRTUAL_ACCOUNT_CREATED = "virtualaccount.created"
    VIRTUAL_ACCOUNT_UPDATED = "virtualaccount.updated"
    TAG_DEFINED = "tag.defined"
    TAG_UPDATED = "tag.updated"
    ROTATION_POLICY_SET = "rotation_policy.set"
    ROTATION_POLICY_REMOVED = "rotation_policy.removed"
    QUOTA_CONFIG_APPLIED = "quota_config.applied"
    DEPLOYMENT_CHANGED = "deployment.changed"
    TIER_CHANGED = "tier.changed"


SYSTEM_ACTOR_LABEL = "system"


def actor_label(actor) -> str:
    if actor is None:
        return SYSTEM_ACTOR_LABEL
    return actor.get_username()


def _team_of(obj: models.Model) -> Team | None:
    if isinstance(obj, Team):
        return obj
    for attr in ("team", "owner_team"):
        team = getattr(obj, attr, None)
        if isinstance(team, Team):
            return team
    return None


def audit_record(
    *,
    actor,
    action: str,
    obj: models.Model,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> AuditLog:
    """Append one entry. Call it inside the service's transaction so both commit together."""
    return AuditLog.objects.create(
        actor=actor if actor is not None and actor.is_authenticated else None,
        actor_label=actor_label(actor),
        action=action,
        object_type=f"{obj._meta.app_label}.{obj._meta.model_name}",
        object_id=str(obj.pk),
        object_repr=str(obj)[:300],
        before=before,
        after=after,
        team=_team_of(obj),
    )


def changes(before: dict[str, Any], after: dict[str, Any]) -> tuple[dict, dict]:
    """Only the fields that changed, so an entry reads as a diff."""
    changed = [name for name in after if before.get(name) != after.get(name)]
    return {n: before.get(n) for n in changed}, {n: after.get(n) for n in changed}
