class AccountsError(Exception):
    """Base of the domain errors raised by accounts services."""


class OwnerError(AccountsError):
    """A key needs exactly one owner, and a user owner must belong to the key's team."""


class TagsError(AccountsError):
    """Default tags must be a JSON object of strings to strings."""


class KeyStateError(AccountsError):
    """The key cannot take this action in its current state (revoked, expired, rotated)."""


class MembershipError(AccountsError):
    """The membership to change does not exist."""


class PolicyError(AccountsError):
    """A rotation policy targets exactly one key or one team, with sane intervals."""


class SecretRevealError(AccountsError):
    """No secret is waiting to be revealed: already revealed, expired, or never created."""


class RegionError(AccountsError):
    """A data region must be one of DATA_REGIONS."""
