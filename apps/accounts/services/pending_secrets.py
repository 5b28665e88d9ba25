"""A scheduled rotation's new secret, kept encrypted until its owner reveals it once.

The beat task has no browser to show a secret in, so besides the email the secret waits
in a `PendingSecret` row as a Fernet token (apps.proxy.crypto, keyed from settings), never
as plaintext. Revealing decrypts it, empties the row and audits `key.secret_revealed`;
a second reveal finds nothing. Unrevealed tokens die with their expiry (retire task) or
with the key (revoke, rotate).
"""

import logging
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from apps.proxy.crypto import SecretDecryptionError, decrypt_secret, encrypt_secret

from ..audit import AuditAction, audit_record
from ..constants import PENDING_SECRET_TTL_DAYS
from ..exceptions import SecretRevealError
from ..models import ApiKey, PendingSecret

logger = logging.getLogger(__name__)


def pending_secret_create(
    *, key: ApiKey, plaintext: str, now: datetime | None = None
) -> PendingSecret:
    """Keep `plaintext` encrypted for `PENDING_SECRET_TTL_DAYS`; call inside the rotation."""
    now = now or timezone.now()
    secret, _ = PendingSecret.objects.update_or_create(
        key=key,
        defaults={
            "ciphertext": encrypt_secret(plaintext),
            "expires_at": now + timedelta(days=PENDING_SECRET_TTL_DAYS),
            "revealed_at": None,
            "revealed_by": None,
        },
    )
    return secret


@transaction.atomic
def pending_secret_reveal(*, key: ApiKey, actor) -> str:
    """Return the waiting secret of `key` once, destroying the stored token.

    Who may call this (the owner, or a team admin for a virtual account's key) is the
    view's check. Raises SecretRevealError when nothing is left to reveal.
    """
    # The row lock makes two simultaneous reveals serialise: the second finds it empty.
    pending = (
        PendingSecret.objects.select_for_update(of=("self",))
        .select_related("key")
        .filter(key_id=key.pk)
        .first()
    )
    now = timezone.now()
    if pending is None or pending.revealed_at is not None or not pending.ciphertext:
        raise SecretRevealError("this key has no secret waiting to be revealed")
    if pending.expires_at <= now or pending.key.revoked_at is not None:
        raise SecretRevealError("the secret waiting for this key has expired; rotate the key")
    try:
        plaintext = decrypt_secret(pending.ciphertext)
    except SecretDecryptionError as exc:
        raise SecretRevealError(
            "the stored secret cannot be decrypted (the encryption key changed); rotate the key"
        ) from exc
    pending.ciphertext = ""
    pending.revealed_at = now
    pending.revealed_by = actor if actor is not None and actor.is_authenticated else None
    pending.save(update_fields=["ciphertext", "revealed_at", "revealed_by"])
    audit_record(
        actor=actor,
        action=AuditAction.KEY_SECRET_REVEALED,
        obj=pending.key,
        before=None,
        after={"prefix": pending.key.prefix, "revealed_at": now.isoformat()},
    )
    return plaintext


def pending_secrets_discard(*, key: ApiKey) -> int:
    """Drop a key's waiting secret: it has no use once the key is revoked or superseded."""
    return PendingSecret.objects.filter(key_id=key.pk).delete()[0]


@transaction.atomic
def pending_secrets_purge(*, now: datetime | None = None) -> int:
    """Delete pending secrets past their expiry, or whose key was revoked meanwhile."""
    now = now or timezone.now()
    deleted, _ = PendingSecret.objects.filter(
        Q(expires_at__lte=now) | Q(key__revoked_at__isnull=False)
    ).delete()
    if deleted:
        logger.info("deleted %d expired pending secrets", deleted)
    return deleted
