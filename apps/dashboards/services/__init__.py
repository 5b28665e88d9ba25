"""Writes of the dashboards app: synthetic usage history (the rollups live in apps.usage)."""

from .generate import UsageGenerationError, usage_generate

__all__ = [
    "UsageGenerationError",
    "usage_generate",
]
