"""Scheduled rotation, expiry warnings and expiry records, run by Celery beat (tasks.py).

A scheduled rotation's new secret reaches the owner twice: in the email, and once in the
portal from an encrypted `PendingSecret` (see pending_secrets.py). It is never stored in
plaintext.
"""

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.template.loader import render_to_string
from django.utils import timezone

from ..audit import AuditAction, audit_record
from ..constants import Role
from ..exceptions import KeyStateError, PolicyError
from ..models import ApiKey, Membership, RotationPolicy, Team
from ..selectors import api_keys_live
from ._common import iso
from .keys import DEFAULT_GRACE_HOURS, api_key_rotate
from .pending_secrets import pending_secret_create

logger = logging.getLogger(__name__)


def _policy_snapshot(policy: RotationPolicy) -> dict:
    return {
        "key": policy.key.prefix if policy.key_id else None,
        "team": policy.team.slug if policy.team_id else None,
        "every_days": policy.every_days,
        "grace_hours": policy.grace_hours,
    }


@transaction.atomic
def rotation_policy_set(
    *,
    key: ApiKey | None = None,
    team: Team | None = None,
    every_days: int,
    grace_hours: float = DEFAULT_GRACE_HOURS,
    actor,
) -> RotationPolicy:
    """Create or change the rotation policy of one key or of a whole team."""
    if (key is None) == (team is None):
        raise PolicyError("a rotation policy targets exactly one key or one team")
    if every_days < 1:
        raise PolicyError("keys can be rotated at most once a day")
    if grace_hours < 0:
        raise PolicyError("the grace period cannot be negative")
    if grace_hours > every_days * 24:
        raise PolicyError("the grace period must be shorter than the rotation interval")
    if key is not None:
        # Re-read under a lock: a concurrent rotation or revocation decides what is allowed.
        key = ApiKey.objects.select_for_update().get(pk=key.pk)
        if key.revoked_at is not None:
            raise PolicyError(f"key {key.prefix} is revoked")
        # A key's policy moves to its successor on rotation; set it where it will stay.
        if ApiKey.objects.filter(rotated_from_id=key.pk).exists():
            raise PolicyError(f"key {key.prefix} was rotated; set the policy on its newest key")
    target = {"key": key} if key is not None else {"team": team}
    existing = RotationPolicy.objects.select_for_update().filter(**target).first()
    before = _policy_snapshot(existing) if existing else None
    policy, _ = RotationPolicy.objects.update_or_create(
        **target, defaults={"every_days": every_days, "grace_hours": grace_hours}
    )
    after = _policy_snapshot(policy)
    if before != after:
        audit_record(
            actor=actor,
            action=AuditAction.ROTATION_POLICY_SET,
            obj=key if key is not None else team,
            before=before,
            after=after,
        )
    return policy


@transaction.atomic
def rotation_policy_remove(*, policy: RotationPolicy, actor) -> None:
    target = policy.key if policy.key_id else policy.team
    audit_record(
        actor=actor,
        action=AuditAction.ROTATION_POLICY_REMOVED,
        obj=target,
        before=_policy_snapshot(policy),
        after=None,
    )
    policy.delete()


def _live_keys(now: datetime):
    return api_keys_live(now=now).select_related("team", "user", "virtual_account")


def _due_keys(now: datetime) -> list[tuple[ApiKey, RotationPolicy]]:
    due: list[tuple[ApiKey, RotationPolicy]] = []
    live = _live_keys(now)
    for policy in RotationPolicy.objects.filter(key__isnull=False):
        cutoff = now - timedelta(days=policy.every_days)
        key = live.filter(pk=policy.key_id, created_at__lte=cutoff).first()
        if key is not None:
            due.append((key, policy))
    for policy in RotationPolicy.objects.filter(team__isnull=False):
        cutoff = now - timedelta(days=policy.every_days)
        keys = live.filter(team_id=policy.team_id, created_at__lte=cutoff).filter(
            rotation_policy__isnull=True  # a key's own policy overrides its team's
        )
        due.extend((key, policy) for key in keys)
    return due


def owner_emails(key: ApiKey) -> list[str]:
    """A user key's owner; for a virtual account's key, its team's admins."""
    if key.user_id:
        return [key.user.email] if key.user.email and key.user.is_active else []
    return sorted(
        set(
            Membership.objects.filter(
                team_id=key.virtual_account.team_id,
                role=Role.TEAM_ADMIN,
                user__is_active=True,
            )
            .exclude(user__email="")
            .values_list("user__email", flat=True)
        )
    )


def _send(*, template: str, subject: str, recipients: list[str], context: dict) -> None:
    body = render_to_string(template, context)
    send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, recipients, fail_silently=False)


def api_keys_rotate_due(*, now: datetime | None = None) -> list[int]:
    """Rotate every key whose policy is due; email each new secret to its owner and keep
    it, encrypted, for one reveal in the portal (`pending_secret_reveal`).

    Returns the new keys' ids. Each key is its own transaction, and the email is sent
    inside it: if the mail server refuses, the rotation rolls back (the old key stays
    fully valid) and the next run retries, so no secret is ever created that nobody got.
    """
    now = now or timezone.now()
    rotated: list[int] = []
    for key, policy in _due_keys(now):
        recipients = owner_emails(key)
        if not recipients:
            logger.warning("not rotating key %s: its owner has no email address", key.prefix)
            continue
        try:
            with transaction.atomic():
                new_key, plaintext = api_key_rotate(
                    key=key, actor=None, grace_hours=policy.grace_hours
                )
                RotationPolicy.objects.filter(pk=policy.pk).update(last_run_at=now)
                pending = pending_secret_create(key=new_key, plaintext=plaintext, now=now)
                old_key = new_key.rotated_from
                _send(
                    template="accounts/email/key_rotated.txt",
                    subject=f"[Tollgate] Your API key {key.name!r} was rotated",
                    recipients=recipients,
                    context={
                        "key": new_key,
                        "old_key": old_key,
                        "secret": plaintext,
                        "grace_ends": old_key.expires_at,
                        "every_days": policy.every_days,
                        "reveal_until": pending.expires_at,
                    },
                )
        except KeyStateError as exc:  # rotated or revoked meanwhile
            logger.info("skipping scheduled rotation of %s: %s", key.prefix, exc)
            continue
        except Exception:
            logger.exception("scheduled rotation of key %s failed; retrying next run", key.prefix)
            continue
        rotated.append(new_key.pk)
    return rotated


def api_keys_retire_expired(*, now: datetime | None = None) -> int:
    """Record each key that has passed its expiry as `key.expired`, once.

    The proxy already refuses expired keys by itself; this is the governance record.
    """
    now = now or timezone.now()
    count = 0
    with transaction.atomic():
        expired = (
            ApiKey.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("team", "user", "virtual_account", "rotated_from")
            .filter(expires_at__lte=now, retired_at__isnull=True, revoked_at__isnull=True)
        )
        for key in expired:
            key.retired_at = now
            key.save(update_fields=["retired_at"])
            audit_record(
                actor=None,
                action=AuditAction.KEY_EXPIRED,
                obj=key,
                before=None,
                after={"prefix": key.prefix, "expires_at": iso(key.expires_at)},
            )
            count += 1
    return count


def api_keys_warn_expiring(*, now: datetime | None = None, days: int | None = None) -> int:
    """Email owners of keys expiring within `days` (KEY_EXPIRY_WARNING_DAYS), once per key.

    Keys in a rotation's grace period are skipped: their owners already have the successor.
    """
    now = now or timezone.now()
    days = settings.KEY_EXPIRY_WARNING_DAYS if days is None else days
    candidates = _live_keys(now).filter(
        expires_at__lte=now + timedelta(days=days), expiry_warned_at__isnull=True
    )
    warned = 0
    for key in candidates:
        recipients = owner_emails(key)
        try:
            with transaction.atomic():
                marked = ApiKey.objects.filter(pk=key.pk, expiry_warned_at__isnull=True).update(
                    expiry_warned_at=now
                )
                if not marked:  # another run got there first
                    continue
                if recipients:
                    _send(
                        template="accounts/email/key_expiring.txt",
                        subject=f"[Tollgate] Your API key {key.name!r} expires soon",
                        recipients=recipients,
                        context={"key": key, "expires_at": key.expires_at},
                    )
        except Exception:
            logger.exception("could not warn about key %s; retrying next run", key.prefix)
            continue
        warned += 1
    return warned
