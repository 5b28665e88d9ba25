"""Writes of the quotas app: applying and rolling back versioned rule configs."""

from django.db import transaction
from django.db.models import Max

from .exceptions import QuotaConfigVersionNotFound
from .models import QuotaConfigVersion
from .rules import parse_config


@transaction.atomic
def quota_config_apply(*, yaml_text: str, author=None, note: str = "apply") -> QuotaConfigVersion:
    """Validate, then store as a new active version; invalid YAML raises QuotaConfigError
    and leaves the previous version active."""
    config = parse_config(yaml_text)
    # Lock the active row so two concurrent applies get consecutive version numbers
    # instead of one of them failing on the unique constraint.
    list(QuotaConfigVersion.objects.select_for_update().filter(is_active=True))
    latest = QuotaConfigVersion.objects.aggregate(latest=Max("version"))["latest"] or 0
    QuotaConfigVersion.objects.filter(is_active=True).update(is_active=False)
    return QuotaConfigVersion.objects.create(
        version=latest + 1,
        name=config.name,
        yaml_text=yaml_text,
        author=author,
        note=note[:200],
        is_active=True,
    )


@transaction.atomic
def quota_config_rollback(*, version: int, author=None) -> QuotaConfigVersion:
    """Make an old version's rules active again, as a new version (history stays linear).

    The old text is re-validated: a rule format that became stricter since is refused.
    """
    old = QuotaConfigVersion.objects.filter(version=version).first()
    if old is None:
        raise QuotaConfigVersionNotFound(f"no quota config version {version}")
    return quota_config_apply(
        yaml_text=old.yaml_text, author=author, note=f"rollback to v{old.version}"
    )
