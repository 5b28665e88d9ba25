"""Billing subjects: a team, a virtual account, or a customer named by a tag value."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from django.conf import settings

from apps.accounts.models import Team, VirtualAccount
from apps.usage.month_to_date import UsageSubject

from .constants import SubjectType
from .exceptions import SubscriptionError


@dataclass(frozen=True)
class BillingSubject:
    type: SubjectType
    team: Team | None = None
    virtual_account: VirtualAccount | None = None
    customer_id: str = ""

    def __post_init__(self) -> None:
        ok = {
            SubjectType.TEAM: self.team is not None,
            SubjectType.VIRTUAL_ACCOUNT: self.virtual_account is not None,
            SubjectType.CUSTOMER: bool(self.customer_id.strip()),
        }.get(SubjectType(self.type), False)
        if not ok:
            raise SubscriptionError(f"a {self.type} subscription needs its subject")

    @property
    def key(self) -> str:
        # Ids, not slugs: a renamed team keeps its history.
        if self.type == SubjectType.TEAM:
            return f"team:{self.team.pk}"
        if self.type == SubjectType.VIRTUAL_ACCOUNT:
            return f"virtual_account:{self.virtual_account.pk}"
        return f"customer:{self.customer_id.strip()}"

    @property
    def label(self) -> str:
        if self.type == SubjectType.TEAM:
            return f"team {self.team.slug}"
        if self.type == SubjectType.VIRTUAL_ACCOUNT:
            return f"virtual account {self.virtual_account.name}"
        return f"customer {self.customer_id.strip()}"

    def usage_subject(self) -> UsageSubject:
        """Whose usage this subject is billed for (for `apps.usage.month_to_date`)."""
        if self.type == SubjectType.TEAM:
            return UsageSubject(team_id=self.team.pk)
        if self.type == SubjectType.VIRTUAL_ACCOUNT:
            return UsageSubject(virtual_account_id=self.virtual_account.pk)
        return UsageSubject(tags=((settings.BILLING_CUSTOMER_TAG_KEY, self.customer_id.strip()),))


def row_subject_keys(row) -> Iterator[str]:
    """Every billing subject a usage or rollup row counts for (keys as `BillingSubject.key`).

    `row` has `team_id`, `virtual_account_id` and `dims` (rollup tag values).
    """
    if row.team_id is not None:
        yield f"team:{row.team_id}"
    if row.virtual_account_id is not None:
        yield f"virtual_account:{row.virtual_account_id}"
    customer = str(row.dims.get(settings.BILLING_CUSTOMER_TAG_KEY) or "").strip()
    if customer:
        yield f"customer:{customer}"


def subject_of(subscription) -> BillingSubject:
    return BillingSubject(
        type=SubjectType(subscription.subject_type),
        team=subscription.team,
        virtual_account=subscription.virtual_account,
        customer_id=subscription.customer_id,
    )
