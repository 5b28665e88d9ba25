"""Reads of the quotas app."""

from django.db.models import QuerySet

from .models import QuotaConfigVersion
from .rules import QuotaConfig, parse_config


def active_quota_config_version() -> QuotaConfigVersion | None:
    return QuotaConfigVersion.objects.filter(is_active=True).select_related("author").first()


def active_quota_config() -> QuotaConfig:
    """The rules in force; an empty config (no limits) before the first apply."""
    row = QuotaConfigVersion.objects.filter(is_active=True).only("yaml_text").first()
    return parse_config(row.yaml_text) if row is not None else QuotaConfig()


def quota_config_versions() -> QuerySet[QuotaConfigVersion]:
    """Every stored version, newest first, for history pages and the export command."""
    return QuotaConfigVersion.objects.select_related("author").order_by("-version")
