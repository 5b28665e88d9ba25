class BillingError(Exception):
    """Base class of billing domain errors; the message is safe to show to the user."""


class SubscriptionError(BillingError):
    """A subscription change that cannot apply (no subject, time before the current start)."""


class UsageQueryError(BillingError):
    """Bad usage query parameters (unknown group_by, reversed range, malformed tag filter)."""
