"""The tag glossary: what each tag key means and who owns it."""

from django.db import transaction

from ..audit import AuditAction, audit_record, changes
from ..models import TagDefinition, Team
from ._common import validate_tag_keys


def _snapshot(definition: TagDefinition) -> dict:
    return {
        "key": definition.key,
        "description": definition.description,
        "owner_team": definition.owner_team.slug if definition.owner_team_id else None,
        "owner_user": definition.owner_user.get_username() if definition.owner_user_id else None,
    }


@transaction.atomic
def tag_definition_upsert(
    *,
    key: str,
    description: str,
    owner_team: Team | None = None,
    owner_user=None,
    actor,
) -> TagDefinition:
    """Define a tag key or update its description and owners (keyed by the tag key)."""
    (key,) = validate_tag_keys([key], what="the tag key")
    definition = (
        TagDefinition.objects.select_for_update(of=("self",))
        .select_related("owner_team", "owner_user")
        .filter(key=key)
        .first()
    )
    if definition is None:
        definition = TagDefinition.objects.create(
            key=key, description=description, owner_team=owner_team, owner_user=owner_user
        )
        audit_record(
            actor=actor,
            action=AuditAction.TAG_DEFINED,
            obj=definition,
            before=None,
            after=_snapshot(definition),
        )
        return definition
    before = _snapshot(definition)
    definition.description = description
    definition.owner_team = owner_team
    definition.owner_user = owner_user
    old, new = changes(before, _snapshot(definition))
    if new:
        definition.save()
        audit_record(
            actor=actor, action=AuditAction.TAG_UPDATED, obj=definition, before=old, after=new
        )
    return definition
