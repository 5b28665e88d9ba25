"""The per-role landing page."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from ..constants import Role
from ..selectors import api_keys_visible_to, portal_identity, teams_visible_to

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
