"""Domain errors of the quotas app (QuotaConfigError lives with the parser in rules.py)."""

from .rules import QuotaConfigError


class QuotasError(Exception):
    """Base of the quotas services' errors other than config validation."""


class QuotaConfigVersionNotFound(QuotasError):
    """No stored config has that version number."""


__all__ = ["QuotaConfigError", "QuotaConfigVersionNotFound", "QuotasError"]
