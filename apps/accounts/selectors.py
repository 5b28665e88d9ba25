"""Reads for tenancy: who a user is in the portal and what they may see.

Every read takes the caller's identity explicitly and returns only rows inside it, so views
and the management API fetch objects through these and get a 404 for anything else.
"""

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from django.contrib.auth import get_user_model
from django.core.exceptions import EmptyResultSet
from django.db import connections
from django.db.models import Count, Prefetch, Q, QuerySet
from django.utils import timezone

from .constants import ORG_WIDE_ROLES, ROLE_RANK, Role
from .models import (
    ApiKey,
    AuditLog,
    Membership,
    PendingSecret,
    RotationPolicy,
    TagDefinition,
    Team,
    VirtualAccount,
)

if TYPE_CHECKING:
    from apps.billing.models import Subscription

User = get_user_model()

# How many recent usage rows the tag glossary scans for tag keys in use.
TAG_SCAN_ROWS = 2000


@dataclass(frozen=True)
class PortalIdentity:
    """The portal role of a user and the teams their team-scoped roles cover."""

    role: Role | None
    team_ids: frozenset[int] = field(default_factory=frozenset)
    admin_team_ids: frozenset[int] = field(default_factory=frozenset)
    user_id: int | None = None

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
        user_id=user.pk,
    )


# --- Teams, members, virtual accounts ------------------------------------------------


def teams_visible_to(*, identity: PortalIdentity) -> QuerySet[Team]:
    if identity.is_org_wide:
        return Team.objects.all()
    return Team.objects.filter(id__in=identity.team_ids)


def teams_administered_by(*, identity: PortalIdentity) -> QuerySet[Team]:
    """Teams whose members, virtual accounts and keys the identity manages."""
    if identity.is_admin:
        return Team.objects.all()
    return Team.objects.filter(id__in=identity.admin_team_ids)


def team_list(*, identity: PortalIdentity) -> QuerySet[Team]:
    return (
        teams_administered_by(identity=identity)
        .annotate(
            member_count=Count("memberships", distinct=True),
            key_count=Count("api_keys", filter=Q(api_keys__revoked_at__isnull=True), distinct=True),
        )
        .prefetch_related("virtual_accounts")
    )


def team_members(*, identity: PortalIdentity, team: Team) -> QuerySet[Membership]:
    if not (identity.is_admin or team.pk in identity.admin_team_ids):
        return Membership.objects.none()
    return Membership.objects.filter(team=team).select_related("user").order_by("user__username")


def membership_list(*, identity: PortalIdentity) -> QuerySet[Membership]:
    return (
        Membership.objects.filter(team__in=teams_administered_by(identity=identity))
        .select_related("user", "team")
        .order_by("team__name", "user__username")
    )


def virtual_accounts_visible_to(*, identity: PortalIdentity) -> QuerySet[VirtualAccount]:
    return VirtualAccount.objects.filter(
        team__in=teams_administered_by(identity=identity)
    ).select_related("team")


def user_by_username(*, identity: PortalIdentity, username: str):
    """A user to add to a team; only someone who administers a team may look one up."""
    if not (identity.is_admin or identity.admin_team_ids):
        return None
    return User.objects.filter(username=username, is_active=True).first()


def users_with_memberships(*, identity: PortalIdentity) -> QuerySet:
    if not identity.is_admin:
        return User.objects.none()
    return User.objects.order_by("username").prefetch_related(
        Prefetch("memberships", queryset=Membership.objects.select_related("team"))
    )


# --- Keys -----------------------------------------------------------------------------


def api_keys_visible_to(*, user, identity: PortalIdentity) -> QuerySet[ApiKey]:
    """Admins see every key, team admins their teams' keys, developers their own keys."""
    keys = ApiKey.objects.select_related("team", "user", "virtual_account")
    if identity.is_admin:
        return keys
    if identity.role == Role.FINANCE or identity.role is None:
        return keys.none()
    if identity.admin_team_ids:
        return keys.filter(Q(team_id__in=identity.admin_team_ids) | Q(user=user))
    return keys.filter(user=user)


def api_key_list(
    *,
    user,
    identity: PortalIdentity,
    team_id: int | None = None,
    active: bool | None = None,
    owner_user_id: int | None = None,
) -> QuerySet[ApiKey]:
    keys = api_keys_visible_to(user=user, identity=identity)
    if team_id is not None:
        keys = keys.filter(team_id=team_id)
    if owner_user_id is not None:
        keys = keys.filter(user_id=owner_user_id)
    if active is True:
        keys = keys.filter(revoked_at__isnull=True)
    elif active is False:
        keys = keys.filter(revoked_at__isnull=False)
    return keys


def key_owner_choices(*, user, identity: PortalIdentity) -> list[tuple[str, str]]:
    """`self` or a virtual account of a team the identity administers, as form choices."""
    choices = [("self", f"Me ({user.get_username()})")]
    for va in virtual_accounts_visible_to(identity=identity).filter(is_active=True):
        choices.append((f"va:{va.pk}", f"Virtual account {va.name} ({va.team})"))
    return choices


def key_team_choices(*, user, identity: PortalIdentity) -> list[tuple[str, str]]:
    """Teams a key owned by the caller may be attributed to: the caller's own teams."""
    teams = Team.objects.filter(memberships__user=user).order_by("name")
    return [(str(team.pk), team.name) for team in teams]


def gateway_model_names() -> list[str]:
    from apps.proxy.models import GatewayModel

    return list(
        GatewayModel.objects.filter(is_active=True).order_by("name").values_list("name", flat=True)
    )


def keys_revoked_on_member_removal(*, user, team: Team) -> QuerySet[ApiKey]:
    """The user's own working keys billed to `team`: what removing them from it revokes.

    Expired keys bill nobody and are left alone; virtual accounts' keys belong to the team.
    """
    return ApiKey.objects.filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()),
        user=user,
        team=team,
        revoked_at__isnull=True,
    ).order_by("created_at")


def may_reveal_pending_secret(*, identity: PortalIdentity, key: ApiKey) -> bool:
    """Only whoever the rotation email went to: the owning user, or for a virtual account's
    key a team admin of its team. Admins and other team admins may not read a secret."""
    if key.user_id is not None:
        return key.user_id == identity.user_id
    return key.virtual_account.team_id in identity.admin_team_ids


def pending_secret_for(*, identity: PortalIdentity, key: ApiKey) -> PendingSecret | None:
    """The newest revealable secret in `key`'s lineage, if this identity may reveal it."""
    pending = (
        PendingSecret.objects.defer("ciphertext")
        .select_related("key__virtual_account")
        .filter(
            key__lineage_id=key.lineage_id,
            key__revoked_at__isnull=True,
            revealed_at__isnull=True,
            expires_at__gt=timezone.now(),
        )
        .exclude(ciphertext="")
        .order_by("-created_at")
        .first()
    )
    if pending is None or not may_reveal_pending_secret(identity=identity, key=pending.key):
        return None
    return pending


# --- Rotation policies --------------------------------------------------------------------


@dataclass(frozen=True)
class RotationSchedule:
    """The policy that applies to a key or team and when it next rotates something.

    `inherited` is true for a key that follows its team's policy. `next_due_at` is None
    when nothing is due (no policy, or no live key under it); a time in the past means the
    next beat run (every 15 minutes) rotates it.
    """

    policy: RotationPolicy | None
    inherited: bool = False
    next_due_at: dt.datetime | None = None
    next_key: ApiKey | None = None


def api_keys_live(*, now: dt.datetime) -> QuerySet[ApiKey]:
    """Keys in use: not revoked, not expired, not already superseded by a rotation."""
    return ApiKey.objects.filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=now),
        revoked_at__isnull=True,
        successors__isnull=True,
    )


def key_rotation_schedule(*, key: ApiKey) -> RotationSchedule:
    """The key's own policy, else its team's; due `every_days` after the key was created."""
    policy = RotationPolicy.objects.filter(key=key).first()
    inherited = False
    if policy is None:
        policy = RotationPolicy.objects.filter(team_id=key.team_id).first()
        inherited = policy is not None
    if policy is None:
        return RotationSchedule(policy=None)
    now = timezone.now()
    live = api_keys_live(now=now).filter(pk=key.pk).exists()
    if not live:
        return RotationSchedule(policy=policy, inherited=inherited)
    due = key.created_at + dt.timedelta(days=policy.every_days)
    return RotationSchedule(policy=policy, inherited=inherited, next_due_at=due, next_key=key)


def team_rotation_schedule(*, team: Team) -> RotationSchedule:
    """The team's policy and the first of its keys it will rotate (keys with their own
    policy follow that one instead)."""
    policy = RotationPolicy.objects.filter(team=team).first()
    if policy is None:
        return RotationSchedule(policy=None)
    now = timezone.now()
    oldest = (
        api_keys_live(now=now)
        .filter(team=team, rotation_policy__isnull=True)
        .order_by("created_at")
        .first()
    )
    if oldest is None:
        return RotationSchedule(policy=policy)
    return RotationSchedule(
        policy=policy,
        next_due_at=oldest.created_at + dt.timedelta(days=policy.every_days),
        next_key=oldest,
    )


# --- Billing tier (read-only view of apps.billing) -----------------------------------------


def team_current_subscription(*, team: Team) -> "Subscription | None":
    """The team's subscription in force now, with its tier, or None when it has no tier.

    Billing owns these rows; accounts only reads them for the team page.
    """
    from apps.billing.constants import SubjectType
    from apps.billing.models import Subscription

    now = timezone.now()
    return (
        Subscription.objects.select_related("tier")
        .filter(subject_type=SubjectType.TEAM, team=team, starts_at__lte=now)
        .filter(Q(ends_at__isnull=True) | Q(ends_at__gt=now))
        .order_by("-starts_at")
        .first()
    )


# --- Tag glossary -----------------------------------------------------------------------


@dataclass(frozen=True)
class GlossaryEntry:
    key: str
    description: str
    owner: str
    defined: bool
    seen_in_usage: bool
    definition: TagDefinition | None


# The distinct keys of the tag objects of a subquery `s`, by database vendor.
_KEYS_OF_TAGS = {
    "postgresql": (
        "SELECT DISTINCT k FROM ({rows}) s, jsonb_object_keys(s.tags) k "
        "WHERE jsonb_typeof(s.tags) = 'object'"
    ),
    "sqlite": (
        "SELECT DISTINCT j.key FROM ({rows}) s, json_each(s.tags) j "
        "WHERE json_type(s.tags) = 'object'"
    ),
}


def tag_keys_recent(*, usage: QuerySet) -> set[str]:
    """Tag keys in the newest `TAG_SCAN_ROWS` of `usage` (usage rows the caller may read).

    The keys are picked out in the database: every dashboard page asks, and decoding
    thousands of tag objects in Python cost more than the rest of a page's reads.
    """
    newest = usage.order_by("-created_at").values("tags")[:TAG_SCAN_ROWS]
    connection = connections[newest.db]
    template = _KEYS_OF_TAGS.get(connection.vendor)
    if template is None:
        keys: set[str] = set()
        for row in newest:
            if isinstance(row["tags"], dict):
                keys.update(str(k) for k in row["tags"])
        return keys
    try:
        sql, params = newest.query.sql_with_params()
    except EmptyResultSet:  # a scope that reads nothing
        return set()
    with connection.cursor() as cursor:
        cursor.execute(template.format(rows=sql), params)
        return {str(key) for (key,) in cursor.fetchall()}


def tag_glossary(*, identity: PortalIdentity) -> list[GlossaryEntry]:
    """Defined tag keys plus keys seen in the caller's recent usage, alphabetically."""
    # Local: apps.usage builds on this module.
    from apps.usage.models import UsageRecord
    from apps.usage.region_reads import read_each_region
    from apps.usage.scope import usage_scope_for

    definitions = {
        d.key: d for d in TagDefinition.objects.select_related("owner_team", "owner_user")
    }
    scope = usage_scope_for(identity)
    seen: set[str] = set()
    for found in read_each_region(
        scope.readable_regions(),
        lambda: tag_keys_recent(usage=scope.filter(UsageRecord.objects.all())),
    ):
        seen |= found
    entries = []
    for key in sorted(set(definitions) | seen):
        definition = definitions.get(key)
        owner = ""
        if definition is not None:
            owner = str(definition.owner_team or definition.owner_user or "")
        entries.append(
            GlossaryEntry(
                key=key,
                description=definition.description if definition else "",
                owner=owner,
                defined=definition is not None,
                seen_in_usage=key in seen,
                definition=definition,
            )
        )
    return entries


def tag_definition_get(*, key: str) -> TagDefinition | None:
    return TagDefinition.objects.filter(key=key).first()


# --- Audit log --------------------------------------------------------------------------


def audit_log_entries(
    *,
    identity: PortalIdentity,
    actor: str = "",
    action: str = "",
    object_type: str = "",
    date_from: dt.date | None = None,
    date_to: dt.date | None = None,
) -> QuerySet[AuditLog]:
    """Admins only; everyone else gets an empty queryset."""
    if not identity.is_admin:
        return AuditLog.objects.none()
    rows = AuditLog.objects.select_related("actor").order_by("-created_at", "-pk")
    if actor:
        rows = rows.filter(Q(actor_label__icontains=actor) | Q(actor__username__iexact=actor))
    if action:
        rows = rows.filter(action=action)
    if object_type:
        rows = rows.filter(object_type=object_type)
    if date_from:
        rows = rows.filter(created_at__date__gte=date_from)
    if date_to:
        rows = rows.filter(created_at__date__lte=date_to)
    return rows


def audit_filter_choices(*, identity: PortalIdentity) -> tuple[list[str], list[str]]:
    if not identity.is_admin:
        return [], []
    actions = AuditLog.objects.order_by("action").values_list("action", flat=True).distinct()
    types = (
        AuditLog.objects.order_by("object_type").values_list("object_type", flat=True).distinct()
    )
    return list(actions), list(types)
