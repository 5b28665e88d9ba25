"""Reads for tenancy: who a user is in the portal and what they may see."""

from dataclasses import dataclass, field

from .constants import ORG_WIDE_ROLES, ROLE_RANK, Role
from .models import ApiKey, Membership, Team


@dataclass(frozen=True)
class PortalIdentity:
    """The portal role of a user and the teams their team-scoped roles cover."""

    role: Role | None
    team_ids: frozenset[int] = field(default_factory=frozenset)
    admin_team_ids: frozenset[int] = field(default_factory=frozenset)

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN

    @property
    def is_org_wide(self) -> bool:
        return self.role in ORG_WIDE_ROLES


def portal_identity(*, user) -> PortalIdentity:
    if not user.is_authenticated:
        return PortalIdentity(role=None)
    memberships = list(Membership.objects.filter(user=user).values_list("team_id", "role"))
    roles = {Role(role) for _, role in memberships}
    if user.is_superuser:
        roles.add(Role.ADMIN)
    best = next((role for role in ROLE_RANK if role in roles), None)
    return PortalIdentity(
        role=best,
        team_ids=frozenset(team_id for team_id, _ in memberships),
        admin_team_ids=frozenset(
            team_id for team_id, role in memberships if role == Role.TEAM_ADMIN
        ),
    )


def teams_visible_to(*, identity: PortalIdentity):
    if identity.is_org_wide:
        return Team.objects.all()
    return Team.objects.filter(id__in=identity.team_ids)


def api_keys_visible_to(*, user, identity: PortalIdentity):
    """Admins see every key, team admins their teams' keys, developers their own keys."""
    keys = ApiKey.objects.select_related("team", "user", "virtual_account")
    if identity.is_admin:
        return keys
    if identity.role == Role.FINANCE:
        return keys.none()
    if identity.admin_team_ids:
        return keys.filter(team_id__in=identity.admin_team_ids) | keys.filter(user=user)
    return keys.filter(user=user)
