"""Writes of the quotas app: applying and rolling back versioned rule configs, and seeding
monthly counters from the usage ledger."""

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from asgiref.sync import async_to_sync
from django.db import transaction
from django.db.models import Max

from apps.usage.month_to_date import MonthTotals, UsageSubject, month_to_date

from .counters import CounterSeed
from .engine import COUNTER_GRACE_SECONDS, get_quota_engine
from .exceptions import QuotaConfigVersionNotFound
from .models import QuotaConfigVersion
from .rules import (
    ANY_SUBJECT,
    QuotaConfig,
    QuotaConfigError,
    QuotaRule,
    parse_config,
    usd_to_micros,
    window_bounds_ts,
)
from .selectors import quota_config_in_force, resolve_subjects

if TYPE_CHECKING:
    from django.contrib.auth.models import User

# Monthly metrics whose counters are seeded from the ledger. Request counters are not: the
# ledger also holds refused requests, which a request counter never counted.
SEEDED_METRICS = frozenset({"tokens", "input_tokens", "output_tokens", "cost_usd"})


def _seeded(rule: QuotaRule) -> bool:
    # `per` rules keep one counter per tag value; those start from the first request.
    return rule.period == "month" and rule.metric in SEEDED_METRICS and rule.per is None


def _counts(rule: QuotaRule) -> tuple[Any, ...]:
    """What a rule's counters count (its limit aside): a change means a fresh count."""
    return (rule.unit, rule.subjects, rule.models, rule.metadata, rule.per)


def _amount(rule: QuotaRule, usage: MonthTotals) -> int:
    if rule.metric == "tokens":
        return usage.tokens
    if rule.metric == "input_tokens":
        return usage.input_tokens
    if rule.metric == "output_tokens":
        return usage.output_tokens
    return usd_to_micros(usage.cost_usd)


def quota_counters_seed(*, rule_ids: Iterable[str] | None = None, replace: bool = False) -> int:
    """Set this month's counters of the monthly token and cost rules in force (only
    `rule_ids` when given) to the ledger's month to date; returns how many were set.

    Runs when a rule or a tier cap starts to apply or changes what it counts mid-month, so
    the whole month's usage counts, including usage made before (or while on an uncapped
    tier). It never adds: seeding again gives the same value. Requests in flight keep their
    reservations on top (`CounterStore.seed`). By default a counter is only raised, since
    usage settled but not yet written by the usage writer is in the counter alone;
    `replace=True` (a rule now counts something else, so its old value means nothing) sets
    it exactly. Unknown subjects (a team not created yet) are skipped.
    """
    wanted = None if rule_ids is None else set(rule_ids)
    rules = [
        rule
        for rule in quota_config_in_force().rules
        if _seeded(rule) and (wanted is None or rule.id in wanted)
    ]
    if not rules:
        return 0
    now = datetime.now(UTC).timestamp()
    start, reset = window_bounds_ts("month", now)
    month = datetime.fromtimestamp(start, UTC).date()
    ttl = int(reset - now) + COUNTER_GRACE_SECONDS
    resolved = resolve_subjects({subject for rule in rules for subject in rule.subjects})
    seeds = []
    for rule in rules:
        for subject in rule.subjects or (ANY_SUBJECT,):
            if subject == ANY_SUBJECT:
                whose = UsageSubject(tags=rule.metadata)
            elif subject in resolved:
                column, row_id, _ = resolved[subject]
                fields: dict[str, Any] = {column: row_id}
                whose = UsageSubject(**fields, tags=rule.metadata)
            else:
                continue
            usage = month_to_date(subject=whose, month=month, models=rule.models)
            key = rule.counter_key(subject, None, start)
            seeds.append(CounterSeed(key, _amount(rule, usage), ttl, replace))
    async_to_sync(get_quota_engine().store.seed)(seeds)
    return len(seeds)


def quota_counters_seed_on_commit(*, rule_ids: Iterable[str], replace: bool = False) -> None:
    """Seed these rules' counters (the `quotas.counters_seed` task) once the current
    transaction commits, so the task reads the rules and subscriptions just written."""
    ids = sorted(set(rule_ids))
    if not ids:
        return
    from .tasks import counters_seed  # the tasks module imports this one

    transaction.on_commit(lambda: counters_seed.delay(ids, replace))


def _previous_config(row: QuotaConfigVersion | None) -> QuotaConfig:
    if row is None:
        return QuotaConfig()
    try:
        return parse_config(row.yaml_text)
    except QuotaConfigError:
        return QuotaConfig()  # no longer parses: every rule counts as new


@transaction.atomic
def quota_config_apply(
    *, yaml_text: str, author: "User | None" = None, note: str = "apply"
) -> QuotaConfigVersion:
    """Validate, then store as a new active version; invalid YAML raises QuotaConfigError
    and leaves the previous version active. Monthly token and cost rules that are new or
    count something else than before are seeded from the ledger after the commit."""
    config = parse_config(yaml_text)
    # Lock the active row so two concurrent applies get consecutive version numbers
    # instead of one of them failing on the unique constraint.
    active = list(QuotaConfigVersion.objects.select_for_update().filter(is_active=True))
    before = {rule.id: _counts(rule) for rule in _previous_config(next(iter(active), None)).rules}
    latest = QuotaConfigVersion.objects.aggregate(latest=Max("version"))["latest"] or 0
    QuotaConfigVersion.objects.filter(is_active=True).update(is_active=False)
    row = QuotaConfigVersion.objects.create(
        version=latest + 1,
        name=config.name,
        yaml_text=yaml_text,
        author=author,
        note=note[:200],
        is_active=True,
    )
    quota_counters_seed_on_commit(
        rule_ids=[
            rule.id
            for rule in config.rules
            if _seeded(rule) and before.get(rule.id) != _counts(rule)
        ],
        replace=True,
    )
    return row


@transaction.atomic
def quota_config_rollback(*, version: int, author: "User | None" = None) -> QuotaConfigVersion:
    """Make an old version's rules active again, as a new version (history stays linear).

    The old text is re-validated: a rule format that became stricter since is refused.
    """
    old = QuotaConfigVersion.objects.filter(version=version).first()
    if old is None:
        raise QuotaConfigVersionNotFound(f"no quota config version {version}")
    return quota_config_apply(
        yaml_text=old.yaml_text, author=author, note=f"rollback to v{old.version}"
    )
