"""Navigation that shows each role only what it may use."""

from django.utils import timezone

from .constants import Role
from .permissions import ADMIN_ONLY, EVERY_ROLE, KEY_ROLES, TEAM_ROLES
from .selectors import portal_identity

# (label, url name, roles that see it): the same role sets the pages' `portal_view` checks.
NAV_ITEMS = [
    ("Home", "home", EVERY_ROLE),
    ("Keys", "keys", KEY_ROLES),
    ("Teams", "teams", TEAM_ROLES),
    ("Users", "users", ADMIN_ONLY),
    ("Tags", "tags", EVERY_ROLE),
    ("Audit", "audit", ADMIN_ONLY),
    ("Dead letters", "usage:dead_letters", ADMIN_ONLY),
    ("Quotas", "quotas:rules", EVERY_ROLE),
    ("Billing", "billing:statements", {Role.ADMIN, Role.FINANCE}),
    ("Deployments", "proxy:deployments", {Role.ADMIN, Role.FINANCE}),
    ("Dashboards", "dashboards:overview", EVERY_ROLE),
]
# Which nav entry a page belongs to, by the start of its url name.
NAV_SECTIONS = [
    ("quotas:", "quotas:rules"),
    ("proxy:", "proxy:deployments"),
    ("dashboards:", "dashboards:overview"),
    ("key", "keys"),
    ("team", "teams"),
    ("member", "teams"),
    ("virtual_account", "teams"),
    ("user", "users"),
    ("tag", "tags"),
    ("audit", "audit"),
    ("usage:", "usage:dead_letters"),
]


def nav_section(view_name: str | None) -> str | None:
    """The nav entry of a page, from its namespaced view name (`quotas:rules`, `key_detail`)."""
    if not view_name:
        return None
    return next((item for start, item in NAV_SECTIONS if view_name.startswith(start)), view_name)


def portal_nav(request) -> dict:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"nav_items": [], "portal_role": None}
    identity = portal_identity(user=user)
    items = [(label, name) for label, name, roles in NAV_ITEMS if identity.role in roles]
    return {
        "nav_items": items,
        "portal_role": identity.role,
        "nav_active": nav_section(getattr(request.resolver_match, "view_name", None)),
        "show_django_admin": user.is_superuser,
        # For "expired" badges; templates cannot call ApiKey.is_expired(now).
        "now_ts": timezone.now(),
    }
