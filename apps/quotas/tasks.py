"""Quota jobs: seeding monthly counters from the usage ledger (enqueued on commit)."""

from celery import shared_task
from django.db import OperationalError

from .counters import CounterStoreUnavailable
from .services import quota_counters_seed


@shared_task(  # type: ignore[untyped-decorator]  # celery ships no type information
    name="quotas.counters_seed",
    autoretry_for=(OperationalError, CounterStoreUnavailable),
    retry_backoff=True,
    max_retries=3,
)
def counters_seed(rule_ids: list[str] | None = None, replace: bool = False) -> int:
    """Set these rules' monthly counters (all seeded rules when None) to the month to date.

    Idempotent: it sets values from the ledger, so a retry or a duplicate run is harmless.
    """
    return quota_counters_seed(rule_ids=rule_ids, replace=replace)
