"""Tiers and subscriptions: create and edit tiers, change a subject's tier with history."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from apps.accounts.audit import audit_record
from apps.billing.constants import SubjectType
from apps.billing.exceptions import SubscriptionError
from apps.billing.models import Subscription, Tier
from apps.billing.quota_rules import tier_rule_id_for
from apps.billing.subjects import BillingSubject
from apps.quotas.services import quota_counters_seed_on_commit

TIER_FIELDS = (
    "name",
    "monthly_token_allowance",
    "monthly_price",
    "overage_price_per_1k_tokens",
    "hard_cap",
    "included_models",
    "is_active",
)
DEMO_TIERS = [
    # Standard is hard-capped so the demo shows quota enforcement; Professional accrues.
    {
        "name": "Standard",
        "monthly_token_allowance": 200_000,
        "monthly_price": Decimal("49.00"),
        "overage_price_per_1k_tokens": None,
        "hard_cap": True,
    },
    {
        "name": "Professional",
        "monthly_token_allowance": 1_000_000,
        "monthly_price": Decimal("199.00"),
        "overage_price_per_1k_tokens": Decimal("0.250000"),
        "hard_cap": False,
    },
]


def _tier_snapshot(tier: Tier) -> dict:
    return {field: getattr(tier, field) for field in TIER_FIELDS}


@transaction.atomic
def tier_save(*, tier: Tier | None = None, actor=None, **fields) -> Tier:
    """Create a tier, or update `tier` with `fields`; a hard cap clears the overage price.

    When a hard-capped tier starts capping or changes which models count, its subscribers'
    cap counters are seeded from the ledger's month to date (after the commit)."""
    unknown = set(fields) - set(TIER_FIELDS)
    if unknown:
        raise TypeError(f"unknown tier fields: {sorted(unknown)}")
    if fields.get("hard_cap"):
        fields["overage_price_per_1k_tokens"] = None
    before = _tier_snapshot(tier) if tier is not None else None
    if tier is None:
        tier = Tier(**fields)
    else:
        for name, value in fields.items():
            setattr(tier, name, value)
    tier.full_clean()
    tier.save()
    if before is not None and tier.hard_cap:
        if (before["hard_cap"], before["included_models"]) != (True, tier.included_models):
            subscribers = Subscription.objects.filter(
                tier=tier, ends_at__isnull=True
            ).select_related("team", "virtual_account")
            # What the cap counts changed: its counters are set anew, not only raised.
            quota_counters_seed_on_commit(
                rule_ids=[tier_rule_id_for(s) for s in subscribers], replace=True
            )
    audit_record(
        actor=actor,
        action="billing.tier_update" if before else "billing.tier_create",
        obj=tier,
        before=before,
        after=_tier_snapshot(tier),
    )
    return tier


def tiers_seed_demo() -> int:
    """Create the demo tiers if missing (never overwrites an edited tier)."""
    created = 0
    for spec in DEMO_TIERS:
        _, made = Tier.objects.get_or_create(name=spec["name"], defaults=spec)
        created += made
    return created


# Demo teams on the uncapped tier, so the demo shows statements from its first minute
# without refusing the demo user's calls.
DEMO_SUBSCRIBED_TEAMS = ("frontend", "saas")


def subscriptions_seed_demo() -> int:
    """Put the demo teams on Professional from the start of the month, once (idempotent:
    nothing happens when any subscription already exists)."""
    from apps.accounts.models import Team

    if Subscription.objects.exists():
        return 0
    tier = Tier.objects.filter(name="Professional").first()
    if tier is None:
        return 0
    start = timezone.now().replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    teams = Team.objects.filter(slug__in=DEMO_SUBSCRIBED_TEAMS)
    for team in teams:
        subscription_change(
            subject=BillingSubject(type=SubjectType.TEAM, team=team), tier=tier, at=start
        )
    return len(teams)


@transaction.atomic
def subscription_change(
    *,
    subject: BillingSubject,
    tier: Tier | None,
    actor=None,
    at: dt.datetime | None = None,
) -> Subscription | None:
    """Put `subject` on `tier` from `at` (default now); `tier=None` ends the subscription.

    Applies at once: the open subscription is closed at `at` and the new one opens at the
    same instant, so history has no gap and the month's statement prorates the base price.
    Enforcement uses the new tier's allowance against the whole month's usage: a hard cap's
    counter is seeded from the ledger's month to date after the commit, so usage made before
    the change (or while on an uncapped tier) counts.
    """
    at = at or timezone.now()
    if timezone.is_naive(at):
        raise SubscriptionError("the change time must be timezone-aware")
    # Lock the subject's open row so two admins changing it at once serialise here.
    current = (
        Subscription.objects.select_for_update()
        .filter(subject_key=subject.key, ends_at__isnull=True)
        .select_related("tier")
        .first()
    )
    if current is not None and tier is not None and current.tier_id == tier.pk:
        return current
    if current is not None:
        if at <= current.starts_at:
            raise SubscriptionError(
                f"{subject.label} is on {current.tier} since {current.starts_at:%Y-%m-%d %H:%M} "
                "UTC; a change must come after that"
            )
        current.ends_at = at
        current.save(update_fields=["ends_at", "updated_at"])
    elif tier is None:
        return None
    new = None
    if tier is not None:
        new = Subscription.objects.create(
            tier=tier,
            subject_type=subject.type,
            subject_key=subject.key,
            team=subject.team,
            virtual_account=subject.virtual_account,
            customer_id=subject.customer_id.strip(),
            starts_at=at,
            created_by=actor if actor is not None and actor.is_authenticated else None,
        )
        if tier.hard_cap:
            quota_counters_seed_on_commit(rule_ids=[tier_rule_id_for(new)])
    audit_record(
        actor=actor,
        action="billing.subscription_change",
        obj=new or current,
        before={"subject": subject.key, "tier": current.tier.name} if current else None,
        after={"subject": subject.key, "tier": tier.name, "at": at} if tier else None,
    )
    return new
