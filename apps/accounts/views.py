"""Portal pages for tenancy: the per-role landing page, keys and teams."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from .constants import Role
from .selectors import api_keys_visible_to, portal_identity, teams_visible_to

LANDING_TEMPLATES = {
    Role.ADMIN: "accounts/home_admin.html",
    Role.FINANCE: "accounts/home_finance.html",
    Role.TEAM_ADMIN: "accounts/home_team_admin.html",
    Role.DEVELOPER: "accounts/home_developer.html",
}


@login_required
def home(request: HttpRequest) -> HttpResponse:
    identity = portal_identity(user=request.user)
    template = LANDING_TEMPLATES.get(identity.role, "accounts/home_none.html")
    context = {
        "identity": identity,
        "teams": teams_visible_to(identity=identity),
        "keys": api_keys_visible_to(user=request.user, identity=identity)[:10],
    }
    return render(request, template, context)


@login_required
def keys(request: HttpRequest) -> HttpResponse:
    identity = portal_identity(user=request.user)
    if identity.role == Role.FINANCE or identity.role is None:
        return render(request, "accounts/forbidden.html", status=403)
    rows = api_keys_visible_to(user=request.user, identity=identity)
    return render(request, "accounts/keys.html", {"keys": rows})


@login_required
def teams(request: HttpRequest) -> HttpResponse:
    identity = portal_identity(user=request.user)
    if identity.role not in (Role.ADMIN, Role.TEAM_ADMIN):
        return render(request, "accounts/forbidden.html", status=403)
    rows = teams_visible_to(identity=identity).prefetch_related("virtual_accounts")
    if identity.role == Role.TEAM_ADMIN:
        rows = rows.filter(id__in=identity.admin_team_ids)
    return render(request, "accounts/teams.html", {"teams": rows})
