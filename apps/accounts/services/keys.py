"""The API key lifecycle: issue, rotate (with a grace period), revoke and edit.

Every change that the proxy caches is followed, after commit, by an invalidation that
reaches every gateway worker within a second (see apps.proxy.key_events).
"""

from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from ..audit import AuditAction, audit_record, changes
from ..exceptions import KeyStateError, OwnerError
from ..models import ApiKey, Membership, RotationPolicy, Team, VirtualAccount
from ..secrets import NewSecret, generate_secret
from ._common import (
    invalidate_after_commit,
    key_snapshot,
    validate_names,
    validate_tag_keys,
    validate_tags,
)
from .pending_secrets import pending_secrets_discard

DEFAULT_GRACE_HOURS = 24.0


class _Unchanged:
    def __repr__(self) -> str:
        return "UNCHANGED"


# `expires_at=None` clears the expiry, so "leave it alone" needs its own marker.
UNCHANGED = _Unchanged()


def _locked(key: ApiKey) -> ApiKey:
    """Re-read the key under a row lock so concurrent rotations or revocations serialise."""
    return (
        ApiKey.objects.select_for_update(of=("self",))
        .select_related("team", "user", "virtual_account", "rotated_from")
        .get(pk=key.pk)
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
    actor=None,
) -> tuple[ApiKey, str]:
    """Create a key and return it with its plaintext secret, which is never stored."""
    if (user is None) == (virtual_account is None):
        raise OwnerError("a key is owned by exactly one user or one virtual account")
    if virtual_account is not None:
        team = virtual_account.team
    else:
        # The membership row is locked so that a concurrent `membership_remove` (which
        # revokes the user's keys of that team) either sees this key or makes this fail.
        memberships = Membership.objects.filter(user=user)
        if team is None:
            first = (
                memberships.select_for_update(of=("self",))
                .select_related("team")
                .order_by("created_at")
                .first()
            )
            if first is None:
                raise OwnerError(f"user {user} belongs to no team")
            team = first.team
        elif memberships.select_for_update().filter(team=team).first() is None:
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
        allowed_models=validate_names(allowed_models, what="allowed models"),
        scopes=list(scopes or []),
        expires_at=expires_at,
    )
    audit_record(
        actor=actor,
        action=AuditAction.KEY_CREATED,
        obj=key,
        before=None,
        after=key_snapshot(key),
    )
    return key, secret.plaintext


@transaction.atomic
def api_key_revoke(*, key: ApiKey, actor) -> ApiKey:
    """Revoke at once; every gateway worker refuses the key within a second of commit.

    Revoking a revoked key is a no-op (no second audit entry).
    """
    key = _locked(key)
    if key.revoked_at is not None:
        return key
    before = key_snapshot(key)
    key.revoked_at = timezone.now()
    key.save(update_fields=["revoked_at"])
    # A scheduled rotation's unrevealed secret must not outlive the key it opens.
    pending_secrets_discard(key=key)
    audit_record(
        actor=actor,
        action=AuditAction.KEY_REVOKED,
        obj=key,
        before=before,
        after=key_snapshot(key),
    )
    invalidate_after_commit(key_hashes=[key.key_hash])
    return key


@transaction.atomic
def api_key_rotate(
    *, key: ApiKey, actor, grace_hours: float = DEFAULT_GRACE_HOURS
) -> tuple[ApiKey, str]:
    """Issue a successor with the same owner, team, tags and permissions, in the same lineage.

    The old key keeps working for `grace_hours` (never longer than its own expiry), so
    clients can switch without an error. Returns the new key and its plaintext, once;
    `new_key.rotated_from` is the old key as rotated (with its grace-period expiry).
    """
    if grace_hours < 0:
        raise KeyStateError("the grace period cannot be negative")
    key = _locked(key)
    now = timezone.now()
    if key.revoked_at is not None:
        raise KeyStateError(f"key {key.prefix} is revoked; issue a new key instead")
    if key.is_expired(now):
        raise KeyStateError(f"key {key.prefix} has expired; issue a new key instead")
    successor = ApiKey.objects.filter(rotated_from=key).order_by("-created_at").first()
    if successor is not None:
        raise KeyStateError(
            f"key {key.prefix} was already rotated to {successor.prefix}; rotate that key"
        )
    before = key_snapshot(key)
    secret = generate_secret(settings.API_KEY_PREFIX)
    # The successor keeps the old key's remaining lifetime policy: same absolute expiry.
    new_key = ApiKey.objects.create(
        name=key.name,
        prefix=secret.prefix,
        key_hash=secret.key_hash,
        team=key.team,
        user=key.user,
        virtual_account=key.virtual_account,
        lineage_id=key.lineage_id,
        rotated_from=key,
        default_tags=dict(key.default_tags or {}),
        enforced_tag_keys=list(key.enforced_tag_keys or []),
        allowed_models=list(key.allowed_models or []),
        scopes=list(key.scopes or []),
        expires_at=None,
    )
    grace_end = now + timedelta(hours=grace_hours)
    if key.expires_at is None or grace_end < key.expires_at:
        key.expires_at = grace_end
        key.save(update_fields=["expires_at"])
    # A per-key rotation policy follows the lineage to its newest key.
    RotationPolicy.objects.filter(key=key).update(key=new_key)
    # Whoever rotates now gets the successor's secret; the old one's waiting copy is moot.
    pending_secrets_discard(key=key)
    audit_record(
        actor=actor,
        action=AuditAction.KEY_ROTATED,
        obj=key,
        before=before,
        after={
            **key_snapshot(key),
            "successor": new_key.prefix,
            "grace_hours": grace_hours,
        },
    )
    audit_record(
        actor=actor,
        action=AuditAction.KEY_CREATED,
        obj=new_key,
        before=None,
        after=key_snapshot(new_key),
    )
    # Workers holding the old key must pick up its new expiry.
    invalidate_after_commit(key_hashes=[key.key_hash])
    return new_key, secret.plaintext


@transaction.atomic
def api_key_update(
    *,
    key: ApiKey,
    actor,
    name: str | None = None,
    allowed_models: list[str] | None = None,
    default_tags: dict | None = None,
    enforced_tag_keys: list[str] | None = None,
    expires_at: datetime | _Unchanged | None = UNCHANGED,
) -> ApiKey:
    """Edit a key's settings. `expires_at=None` removes the expiry; omit it to keep it."""
    key = _locked(key)
    if key.revoked_at is not None:
        raise KeyStateError(f"key {key.prefix} is revoked and cannot be changed")
    before = key_snapshot(key)
    if name is not None:
        if not name.strip():
            raise KeyStateError("a key needs a name")
        key.name = name.strip()
    if allowed_models is not None:
        key.allowed_models = validate_names(allowed_models, what="allowed models")
    if default_tags is not None:
        key.default_tags = validate_tags(default_tags)
    if enforced_tag_keys is not None:
        key.enforced_tag_keys = validate_tag_keys(enforced_tag_keys, what="enforced tag keys")
    if not isinstance(expires_at, _Unchanged):
        if expires_at is not None and timezone.is_naive(expires_at):
            raise KeyStateError("expires_at must be timezone-aware")
        key.expires_at = expires_at
        # A new expiry deserves its own warning and, later, its own expiry record.
        key.expiry_warned_at = None
        key.retired_at = None
    old, new = changes(before, key_snapshot(key))
    if not new:
        return key
    key.save(
        update_fields=[
            "name",
            "allowed_models",
            "default_tags",
            "enforced_tag_keys",
            "expires_at",
            "expiry_warned_at",
            "retired_at",
        ]
    )
    audit_record(actor=actor, action=AuditAction.KEY_UPDATED, obj=key, before=old, after=new)
    invalidate_after_commit(key_hashes=[key.key_hash])
    return key
