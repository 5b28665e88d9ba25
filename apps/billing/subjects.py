"""Billing subjects: a team, a virtual account, or a customer named by a tag value."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.db.models import Q

from apps.accounts.models import Team, VirtualAccount

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

    def usage_filter(self) -> Q:
        """Rows of this subject in a rollup queryset."""
        if self.type == SubjectType.TEAM:
            return Q(team_id=self.team.pk)
        if self.type == SubjectType.VIRTUAL_ACCOUNT:
            return Q(virtual_account_id=self.virtual_account.pk)
        return Q(**{f"dims__{settings.BILLING_CUSTOMER_TAG_KEY}": self.customer_id.strip()})


def subject_of(subscription) -> BillingSubject:
    return BillingSubject(
        type=SubjectType(subscription.subject_type),
        team=subscription.team,
        virtual_account=subscription.virtual_account,
        customer_id=subscription.customer_id,
    )
