"""Writes of the dashboards app: synthetic usage history and the dashboard rollups."""

from .generate import UsageGenerationError, usage_generate
from .rollups import DashboardRollupResult, dashboard_rollup_day, dashboard_rollup_days

__all__ = [
    "DashboardRollupResult",
    "UsageGenerationError",
    "dashboard_rollup_day",
    "dashboard_rollup_days",
    "usage_generate",
]
