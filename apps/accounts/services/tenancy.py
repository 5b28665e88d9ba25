"""Writes for teams, memberships and virtual accounts."""

from django.db import transaction
from django.utils.text import slugify

from ..audit import AuditAction, audit_record, changes
from ..constants import Role
from ..exceptions import MembershipError
from ..models import ApiKey, Membership, Team, VirtualAccount
from ..selectors import keys_revoked_on_member_removal
from ._common import (
    invalidate_after_commit,
    membership_snapshot,
    team_snapshot,
    validate_tag_keys,
    validate_tags,
    virtual_account_snapshot,
)
from .keys import api_key_revoke


@transaction.atomic
def team_create(
    *,
    name: str,
    slug: str = "",
    default_tags: dict | None = None,
    required_tag_keys: list[str] | None = None,
    allow_request_logging: bool = True,
    actor=None,
) -> Team:
    team = Team.objects.create(
        name=name,
        slug=slug or slugify(name),
        default_tags=validate_tags(default_tags),
        required_tag_keys=validate_tag_keys(required_tag_keys, what="required tag keys"),
        allow_request_logging=bool(allow_request_logging),
    )
    audit_record(
        actor=actor,
        action=AuditAction.TEAM_CREATED,
        obj=team,
        before=None,
        after=team_snapshot(team),
    )
    return team


@transaction.atomic
def team_update(
    *,
    team: Team,
    actor,
    name: str | None = None,
    default_tags: dict | None = None,
    allow_request_logging: bool | None = None,
    required_tag_keys: list[str] | None = None,
) -> Team:
    """Change team settings; every worker re-reads the team's keys (tags are cached there)."""
    team = Team.objects.select_for_update().get(pk=team.pk)
    before = team_snapshot(team)
    if name is not None:
        team.name = name
    if default_tags is not None:
        team.default_tags = validate_tags(default_tags)
    if allow_request_logging is not None:
        team.allow_request_logging = bool(allow_request_logging)
    if required_tag_keys is not None:
        team.required_tag_keys = validate_tag_keys(required_tag_keys, what="required tag keys")
    old, new = changes(before, team_snapshot(team))
    if not new:
        return team
    team.full_clean(exclude=["slug"])
    team.save()
    audit_record(actor=actor, action=AuditAction.TEAM_UPDATED, obj=team, before=old, after=new)
    invalidate_after_commit(team_id=team.pk)
    return team


@transaction.atomic
def membership_set(*, user, team: Team, role: str, actor=None) -> Membership:
    existing = Membership.objects.filter(user=user, team=team).select_related("user").first()
    before = membership_snapshot(existing) if existing else None
    membership, _ = Membership.objects.update_or_create(
        user=user, team=team, defaults={"role": Role(role)}
    )
    after = membership_snapshot(membership)
    if before != after:
        audit_record(
            actor=actor,
            action=AuditAction.MEMBERSHIP_SET,
            obj=membership,
            before=before,
            after=after,
        )
    return membership


@transaction.atomic
def membership_remove(*, user, team: Team, actor) -> list[ApiKey]:
    """Remove a user from a team and revoke their own keys billed to it.

    A former member must not keep spending the team's money, so every working key the user
    owns with `team` as its billing team (including a rotated key still in its grace
    period) is revoked in the same transaction, each with its own `key.revoked` audit entry
    and cache invalidation. If any step fails nothing changes: the membership stays and so
    do the keys. Their keys billed to other teams, and the team's virtual-account keys, are
    unaffected. Returns the keys revoked.
    """
    membership = (
        Membership.objects.select_for_update(of=("self",))
        .filter(user=user, team=team)
        .select_related("user", "team")
        .first()
    )
    if membership is None:
        raise MembershipError(f"user {user} is not a member of team {team}")
    before = membership_snapshot(membership)
    audit_record(
        actor=actor,
        action=AuditAction.MEMBERSHIP_REMOVED,
        obj=membership,
        before=before,
        after=None,
    )
    membership.delete()
    return [
        api_key_revoke(key=key, actor=actor)
        for key in keys_revoked_on_member_removal(user=user, team=team)
    ]


@transaction.atomic
def virtual_account_create(
    *,
    team: Team,
    name: str,
    description: str = "",
    default_tags: dict | None = None,
    actor=None,
) -> VirtualAccount:
    va = VirtualAccount.objects.create(
        team=team,
        name=name,
        description=description,
        default_tags=validate_tags(default_tags),
    )
    audit_record(
        actor=actor,
        action=AuditAction.VIRTUAL_ACCOUNT_CREATED,
        obj=va,
        before=None,
        after=virtual_account_snapshot(va),
    )
    return va


@transaction.atomic
def virtual_account_update(
    *,
    virtual_account: VirtualAccount,
    actor,
    description: str | None = None,
    default_tags: dict | None = None,
    is_active: bool | None = None,
) -> VirtualAccount:
    """Edit a virtual account; deactivating it makes every worker refuse its keys at once."""
    va = (
        VirtualAccount.objects.select_for_update().select_related("team").get(pk=virtual_account.pk)
    )
    before = virtual_account_snapshot(va)
    if description is not None:
        va.description = description
    if default_tags is not None:
        va.default_tags = validate_tags(default_tags)
    if is_active is not None:
        va.is_active = bool(is_active)
    old, new = changes(before, virtual_account_snapshot(va))
    if not new:
        return va
    va.save()
    audit_record(
        actor=actor, action=AuditAction.VIRTUAL_ACCOUNT_UPDATED, obj=va, before=old, after=new
    )
    # Owner tags and the active flag live in every cached KeyInfo of this account's keys.
    invalidate_after_commit(
        key_hashes=list(
            ApiKey.objects.filter(virtual_account=va).values_list("key_hash", flat=True)
        )
    )
    return va
