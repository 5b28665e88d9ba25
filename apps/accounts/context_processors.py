"""Navigation that shows each role only what it may use."""

from .constants import Role
from .selectors import portal_identity

# (label, url name, roles that see it)
NAV_ITEMS = [
    ("Home", "home", {Role.ADMIN, Role.FINANCE, Role.TEAM_ADMIN, Role.DEVELOPER}),
    ("API keys", "keys", {Role.ADMIN, Role.TEAM_ADMIN, Role.DEVELOPER}),
    ("Teams", "teams", {Role.ADMIN, Role.TEAM_ADMIN}),
]


def portal_nav(request) -> dict:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"nav_items": [], "portal_role": None}
    identity = portal_identity(user=user)
    items = [(label, name) for label, name, roles in NAV_ITEMS if identity.role in roles]
    return {
        "nav_items": items,
        "portal_role": identity.role,
        "show_django_admin": user.is_superuser,
    }
