"""Role and tenant checks, in one place, for portal views and the DRF management API.

A role check answers "may this kind of user use this page at all" (403 when not); the
tenant check is done by fetching objects through identity-scoped selectors, so an object
outside the caller's reach is a 404 and its existence does not leak.
"""

from collections.abc import Callable
from functools import wraps

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from rest_framework.permissions import BasePermission

from .constants import Role
from .selectors import PortalIdentity, portal_identity

EVERY_ROLE = frozenset({Role.ADMIN, Role.FINANCE, Role.TEAM_ADMIN, Role.DEVELOPER})
KEY_ROLES = frozenset({Role.ADMIN, Role.TEAM_ADMIN, Role.DEVELOPER})
TEAM_ROLES = frozenset({Role.ADMIN, Role.TEAM_ADMIN})
ADMIN_ONLY = frozenset({Role.ADMIN})


def has_role(identity: PortalIdentity, roles: frozenset[Role]) -> bool:
    return identity.role is not None and identity.role in roles


def administers_team(identity: PortalIdentity, team_id: int | None) -> bool:
    """Admins administer every team; team admins the teams where they hold that role."""
    return identity.is_admin or (team_id is not None and team_id in identity.admin_team_ids)


def assignable_roles(identity: PortalIdentity) -> list[Role]:
    """Roles this identity may grant. Team admins cannot mint org-wide roles."""
    # Least privilege first: it is the default a form shows.
    if identity.is_admin:
        return [Role.DEVELOPER, Role.TEAM_ADMIN, Role.FINANCE, Role.ADMIN]
    if identity.admin_team_ids:
        return [Role.DEVELOPER, Role.TEAM_ADMIN]
    return []


def can_edit_enforced_tags(identity: PortalIdentity, key) -> bool:
    return administers_team(identity, key.team_id)


def can_edit_tag_definition(identity: PortalIdentity, definition) -> bool:
    """Admins edit any glossary entry; team admins new ones and their teams' entries."""
    if identity.is_admin:
        return True
    if not identity.admin_team_ids:
        return False
    return definition is None or definition.owner_team_id in identity.admin_team_ids


def portal_view(roles: frozenset[Role]) -> Callable:
    """Log in, resolve the caller's identity and refuse roles outside `roles` (403).

    The wrapped view receives the identity as its second argument.
    """

    def decorator(view: Callable) -> Callable:
        @login_required
        @wraps(view)
        def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            identity = portal_identity(user=request.user)
            if not has_role(identity, roles):
                return render(request, "accounts/forbidden.html", status=403)
            return view(request, identity, *args, **kwargs)

        return wrapper

    return decorator


class HasPortalRole(BasePermission):
    """DRF: the caller's portal role must be in the view's `allowed_roles`.

    The identity is cached on the request for the viewset's scoped querysets.
    """

    message = "Your role does not include this API."

    def has_permission(self, request, view) -> bool:
        if not request.user or not request.user.is_authenticated:
            return False
        identity = request_identity(request)
        return has_role(identity, getattr(view, "allowed_roles", ADMIN_ONLY))


def request_identity(request) -> PortalIdentity:
    identity = getattr(request, "_portal_identity", None)
    if identity is None:
        identity = portal_identity(user=request.user)
        request._portal_identity = identity
    return identity


def can_change_membership(identity: PortalIdentity, membership) -> bool:
    """A team admin may not touch an admin's or finance person's membership."""
    if identity.is_admin:
        return True
    return administers_team(identity, membership.team_id) and membership.role in assignable_roles(
        identity
    )
