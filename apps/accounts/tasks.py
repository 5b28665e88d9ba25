"""Key lifecycle jobs run by Celery beat (schedules in settings.CELERY_BEAT_SCHEDULE).

Each is idempotent: a key is rotated only when due, warned and recorded as expired once.
"""

from celery import shared_task

from .services import (
    api_keys_retire_expired,
    api_keys_rotate_due,
    api_keys_warn_expiring,
    pending_secrets_purge,
)


@shared_task(name="accounts.rotate_due_keys")
def rotate_due_keys() -> list[int]:
    """Returns the ids of the new keys (never their secrets: those go only by email)."""
    return api_keys_rotate_due()


@shared_task(name="accounts.retire_expired_keys")
def retire_expired_keys() -> int:
    """Records expired keys; also deletes expired pending secrets, which rides this
    five-minute schedule rather than adding a beat entry of its own."""
    pending_secrets_purge()
    return api_keys_retire_expired()


@shared_task(name="accounts.warn_expiring_keys")
def warn_expiring_keys() -> int:
    return api_keys_warn_expiring()
