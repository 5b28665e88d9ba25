class AccountsError(Exception):
    """Base of the domain errors raised by accounts services."""


class OwnerError(AccountsError):
    """A key needs exactly one owner, and a user owner must belong to the key's team."""


class TagsError(AccountsError):
    """Default tags must be a JSON object of strings to strings."""
