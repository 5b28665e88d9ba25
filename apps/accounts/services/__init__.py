"""Writes and use cases for teams, memberships, virtual accounts, API keys and tags.

Split by subject; import from here (`from apps.accounts.services import api_key_rotate`).
"""

from ..audit import audit_record
from ._common import invalidate_after_commit, validate_tag_keys, validate_tags
from .keys import (
    DEFAULT_GRACE_HOURS,
    UNCHANGED,
    api_key_issue,
    api_key_revoke,
    api_key_rotate,
    api_key_update,
)
from .pending_secrets import (
    pending_secret_create,
    pending_secret_reveal,
    pending_secrets_purge,
)
from .regions import customer_region_set, team_region_set
from .rotation import (
    api_keys_retire_expired,
    api_keys_rotate_due,
    api_keys_warn_expiring,
    rotation_policy_remove,
    rotation_policy_set,
)
from .tags import tag_definition_upsert
from .tenancy import (
    membership_remove,
    membership_set,
    team_create,
    team_update,
    virtual_account_create,
    virtual_account_update,
)

__all__ = [
    "DEFAULT_GRACE_HOURS",
    "UNCHANGED",
    "api_key_issue",
    "api_key_revoke",
    "api_key_rotate",
    "api_key_update",
    "api_keys_retire_expired",
    "api_keys_rotate_due",
    "api_keys_warn_expiring",
    "audit_record",
    "customer_region_set",
    "invalidate_after_commit",
    "membership_remove",
    "membership_set",
    "pending_secret_create",
    "pending_secret_reveal",
    "pending_secrets_purge",
    "rotation_policy_remove",
    "rotation_policy_set",
    "tag_definition_upsert",
    "team_create",
    "team_region_set",
    "team_update",
    "validate_tag_keys",
    "validate_tags",
    "virtual_account_create",
    "virtual_account_update",
]
