"""Quota rules generated from hard-capped subscriptions, for the quota engine.

Kept apart from selectors so the engine (on the /v1 hot path) imports only models and
`apps.quotas.rules`. Each subscriber gets its own rule with an id stable across tier changes
(`tier-team-<slug>`, `tier-va-<name>`, `tier-customer-<value>`): the quota counter key
includes the rule id, so a mid-month change keeps the month's count and the new allowance
covers the usage so far. `source` names the tier (`tier:<name>`).
"""

from __future__ import annotations

import hashlib
import re

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from apps.quotas.rules import QuotaRule

from .constants import SubjectType
from .models import Subscription

_SLUG_RE = re.compile(r"[^A-Za-z0-9_.-]+")


def _rule_id(kind: str, name: str) -> str:
    slug = _SLUG_RE.sub("-", name.strip()).strip("-.").lower() or "x"
    rule_id = f"tier-{kind}-{slug}"
    if len(rule_id) > 100:
        # Over-long tag values: keep the id unique and within the quota id syntax.
        digest = hashlib.sha256(name.encode()).hexdigest()[:12]
        rule_id = f"{rule_id[:87]}-{digest}"
    return rule_id


def _active_hard_capped():
    now = timezone.now()
    return (
        Subscription.objects.filter(
            Q(ends_at__isnull=True) | Q(ends_at__gt=now),
            starts_at__lte=now,
            tier__hard_cap=True,
        )
        .select_related("tier", "team", "virtual_account")
        .order_by("subject_key")
    )


def _rule_for(sub: Subscription) -> QuotaRule:
    tier = sub.tier
    common = {
        "unit": "tokens_per_month",
        "limit_to": tier.monthly_token_allowance,
        "models": frozenset(tier.included_models or ()),
        "source": f"tier:{tier.name}",
    }
    if sub.subject_type == SubjectType.TEAM:
        return QuotaRule(
            id=_rule_id("team", sub.team.slug), subjects=(f"team:{sub.team.slug}",), **common
        )
    if sub.subject_type == SubjectType.VIRTUAL_ACCOUNT:
        name = sub.virtual_account.name
        return QuotaRule(id=_rule_id("va", name), subjects=(f"virtualaccount:{name}",), **common)
    # A customer is a tag value: no subjects (one counter) and a metadata condition.
    return QuotaRule(
        id=_rule_id("customer", sub.customer_id),
        metadata=((settings.BILLING_CUSTOMER_TAG_KEY, sub.customer_id),),
        **common,
    )


def tier_rule_id_for(sub: Subscription) -> str:
    """The id of the rule a hard-capped subscription generates (same for every tier)."""
    return _rule_for(sub).id


def tier_quota_state() -> tuple[str, list[QuotaRule]]:
    """(stamp, rules) for hard-capped subscriptions active now.

    The stamp changes whenever the generated rules would: a subscription starts or ends
    (including a scheduled one reaching its time) or a tier's allowance or models change.
    """
    subs = list(_active_hard_capped())
    rules = [_rule_for(sub) for sub in subs]
    material = "|".join(
        f"{rule.id}:{rule.source}:{rule.limit}:{sorted(rule.models)}:{rule.subjects}:{rule.metadata}"
        for rule in rules
    )
    return hashlib.sha256(material.encode()).hexdigest()[:16], rules


def tier_quota_rules() -> list[QuotaRule]:
    return tier_quota_state()[1]


atier_quota_state = sync_to_async(tier_quota_state, thread_sensitive=True)
