"""Who may see which usage: one scope, built from the portal identity, for every surface.

Dashboards (pages and their CSVs), `/api/usage` (JSON, NDJSON, CSV, raw rows), the
chargeback CSV and the quotas page all build a `UsageScope` here and filter with `q()`, so
the same person gets the same rows everywhere.

The rule:
- admin and finance: every row;
- team admin: every row of the teams they administer, plus their own rows in any team;
- developer: their own rows (`user_id` is them), in whichever team they were made;
- no role (no membership): nothing; every surface answers 403.

With several data regions, a caller below the org-wide roles reads only the regions of their
teams (`regions`): a team admin sees their team's region, finance and admins every region,
merged. Rows a customer's own region moved elsewhere are read by the org-wide roles only.

An API key with the `usage:read` scope acts for its owner: a user's key reads what that user
reads in the portal (a developer's key their own rows, not the key's whole team); a virtual
account's key reads that account's rows.

An explicit filter reaching outside the scope is refused (`PermissionError`, a 403), never
silently narrowed, and the check runs before a streamed body starts:
- a team filter needs the whole team: admin/finance, or a team the caller administers (a
  developer may not filter by team, their own included: they see only their rows in it);
- a user filter: the caller themself, or a member of a team the caller administers;
- a virtual account filter: an account of a team the caller administers, or the key's own.
Rows are still intersected with the scope, so a team admin filtering on a member gets that
member's rows in the admin's teams only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from django.db.models import Q, QuerySet

from apps.accounts.constants import Role
from apps.accounts.models import ApiKey, Membership, Team, VirtualAccount
from apps.accounts.selectors import PortalIdentity, portal_identity

from .constants import USAGE_READ_SCOPE
from .regions import is_multi_region, region_names, region_or_default


@dataclass(frozen=True)
class UsageScope:
    """Usage rows a caller may read: everything, or rows of `team_ids`, of `user_id` and of
    `virtual_account_id` (any that are set). Works on `UsageRecord` and on every rollup with
    `team_id` / `user_id` / `virtual_account_id` columns."""

    everything: bool = False
    team_ids: frozenset[int] = frozenset()
    user_id: int | None = None
    virtual_account_id: int | None = None
    # Data regions whose ledgers may be read; empty: every region.
    regions: frozenset[str] = frozenset()

    def readable_regions(self, wanted: Iterable[str] = ()) -> list[str]:
        """The regions to read, in DATA_REGIONS order: `wanted` (empty: all) within the
        scope's."""
        chosen = set(wanted)
        return [
            name
            for name in region_names()
            if (not chosen or name in chosen) and (not self.regions or name in self.regions)
        ]

    @property
    def is_empty(self) -> bool:
        return not (
            self.everything
            or self.team_ids
            or self.user_id is not None
            or self.virtual_account_id is not None
        )

    def q(self) -> Q:
        """The scope as a filter on the row's `team_id`, `user_id`, `virtual_account_id`."""
        if self.everything:
            return Q()
        q = Q(pk__in=[])
        if self.team_ids:
            q |= Q(team_id__in=sorted(self.team_ids))
        if self.user_id is not None:
            q |= Q(user_id=self.user_id)
        if self.virtual_account_id is not None:
            q |= Q(virtual_account_id=self.virtual_account_id)
        return q

    def filter(self, qs: QuerySet) -> QuerySet:
        """`qs` narrowed to the scope (no query at all when the scope is empty)."""
        return qs.none() if self.is_empty else qs.filter(self.q())

    def may_read_team(self, team_id: int) -> bool:
        return self.everything or team_id in self.team_ids

    def check_filters(
        self,
        *,
        team_ids: Iterable[int] = (),
        user_ids: Iterable[int] = (),
        virtual_account_ids: Iterable[int] = (),
        regions: Iterable[str] = (),
    ) -> None:
        """Raise PermissionError when an explicit filter reaches outside the scope."""
        outside = sorted(set(regions) - self.regions) if self.regions else []
        if outside:
            raise PermissionError(
                f"region: you may only read your teams' data regions ({', '.join(sorted(self.regions))})"
            )
        if self.everything:
            return
        if any(not self.may_read_team(team_id) for team_id in team_ids):
            raise PermissionError("team: you may only filter on teams you administer")
        others = set(user_ids) - {self.user_id}
        if others:
            members = Membership.objects.filter(team_id__in=self.team_ids, user_id__in=others)
            if set(members.values_list("user_id", flat=True)) != others:
                raise PermissionError("user: you may only filter on yourself or your members")
        accounts = set(virtual_account_ids) - {self.virtual_account_id}
        if accounts:
            ours = VirtualAccount.objects.filter(team_id__in=self.team_ids, pk__in=accounts)
            if set(ours.values_list("pk", flat=True)) != accounts:
                raise PermissionError(
                    "virtual_account: you may only filter on your teams' virtual accounts"
                )


NO_USAGE = UsageScope()


def usage_scope_for(identity: PortalIdentity) -> UsageScope:
    """The scope of a portal identity (the rule in the module docstring)."""
    if identity.is_org_wide:
        return UsageScope(everything=True)
    if identity.role == Role.TEAM_ADMIN:
        return UsageScope(
            team_ids=identity.admin_team_ids,
            user_id=identity.user_id,
            regions=_team_regions(identity.team_ids),
        )
    if identity.role == Role.DEVELOPER:
        return UsageScope(user_id=identity.user_id, regions=_team_regions(identity.team_ids))
    return NO_USAGE


def _team_regions(team_ids: Iterable[int]) -> frozenset[str]:
    """The data regions of these teams; empty (no restriction) with one region only."""
    if not is_multi_region():
        return frozenset()
    stored = Team.objects.filter(pk__in=list(team_ids)).values_list("data_region", flat=True)
    # A caller in no team reads no region: the name of none stands for "nothing".
    return frozenset(region_or_default(name) for name in stored) or frozenset({""})


def usage_scope_for_key(key: ApiKey) -> UsageScope:
    """The scope of an API key caller: its owner's. PermissionError without `usage:read`."""
    if USAGE_READ_SCOPE not in (key.scopes or []):
        raise PermissionError(f"This API key lacks the {USAGE_READ_SCOPE} scope.")
    if key.user_id is not None:
        return usage_scope_for(portal_identity(user=key.user))
    # A virtual account's key belongs to the account's team, whose region it reads.
    return UsageScope(
        virtual_account_id=key.virtual_account_id, regions=_team_regions([key.team_id])
    )
