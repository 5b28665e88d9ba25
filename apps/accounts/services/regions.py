"""Where a tenant's usage is kept: a team's data region, and customers kept outside theirs.

A change applies to new rows at once: every worker re-reads the team's keys (their cached
information holds the region) and the catalog refresh brings customer regions. Rows already
written stay where they are until `manage.py usage move-region` moves them.
"""

from django.db import transaction

from apps.usage.regions import region_names, region_or_default

from ..audit import AuditAction, audit_record
from ..exceptions import RegionError
from ..models import CustomerRegion, Team
from ._common import invalidate_after_commit


def _checked(region: str) -> str:
    if region not in region_names():
        raise RegionError(f"'{region}' is not a data region here; choose one of {region_names()}")
    return region


@transaction.atomic
def team_region_set(*, team: Team, region: str, actor) -> Team:
    """Keep the team's new usage rows in `region`; audited."""
    team = Team.objects.select_for_update().get(pk=team.pk)
    region = _checked(region)
    # An explicit choice is stored even when it is today's default, so a later change of
    # DATA_REGION_DEFAULT does not move this team's new rows.
    if region == team.data_region:
        return team
    before = region_or_default(team.data_region)
    team.data_region = region
    team.save(update_fields=["data_region"])
    audit_record(
        actor=actor,
        action=AuditAction.TEAM_REGION_CHANGED,
        obj=team,
        before={"data_region": before},
        after={"data_region": region},
    )
    invalidate_after_commit(team_id=team.pk)
    return team


@transaction.atomic
def customer_region_set(*, customer_id: str, region: str | None, actor) -> CustomerRegion | None:
    """Keep a customer's rows in `region` whatever its team's; None removes the override."""
    customer_id = customer_id.strip()
    if not customer_id:
        raise RegionError("a customer region needs the customer's tag value")
    current = CustomerRegion.objects.select_for_update().filter(customer_id=customer_id).first()
    before = {"region": current.region} if current else None
    if region is None:
        if current is not None:
            audit_record(
                actor=actor,
                action=AuditAction.CUSTOMER_REGION_SET,
                obj=current,
                before={"customer_id": customer_id, **(before or {})},
                after=None,
            )
            current.delete()
        return None
    region = _checked(region)
    row, _ = CustomerRegion.objects.update_or_create(
        customer_id=customer_id, defaults={"region": region}
    )
    audit_record(
        actor=actor,
        action=AuditAction.CUSTOMER_REGION_SET,
        obj=row,
        before={"customer_id": customer_id, **(before or {})},
        after={"customer_id": customer_id, "region": region},
    )
    return row
