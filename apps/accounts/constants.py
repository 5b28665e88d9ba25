from django.db import models


class Role(models.TextChoices):
    """Portal roles. ADMIN and FINANCE are organisation-wide; the others are per team."""

    ADMIN = "admin", "Admin"
    FINANCE = "finance", "Finance"
    TEAM_ADMIN = "team_admin", "Team admin"
    DEVELOPER = "developer", "Developer"


ORG_WIDE_ROLES = frozenset({Role.ADMIN, Role.FINANCE})
# Highest first: a user's portal role is the highest role they hold anywhere.
ROLE_RANK = [Role.ADMIN, Role.FINANCE, Role.TEAM_ADMIN, Role.DEVELOPER]

SECRET_BYTES = 32
DISPLAY_PREFIX_CHARS = 8
# How long a scheduled rotation's new secret waits, encrypted, to be revealed in the portal.
PENDING_SECRET_TTL_DAYS = 7
