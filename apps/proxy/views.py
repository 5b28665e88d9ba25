"""Portal page of the proxy: each model's deployments and their live health.

Admins and finance only. The page is a shell; it polls `deployments_data` (JSON) every few
seconds. That endpoint reads the in-memory catalog and the fleet's health (Redis snapshots,
or this process in embedded mode): no database query beyond the login and role lookup.
"""

from asgiref.sync import sync_to_async
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from apps.accounts.constants import Role
from apps.accounts.selectors import portal_identity

from .catalog import catalog
from .health import board, overview

VIEWER_ROLES = {Role.ADMIN, Role.FINANCE}
REFRESH_SECONDS = 3


@login_required
def deployments(request: HttpRequest) -> HttpResponse:
    if portal_identity(user=request.user).role not in VIEWER_ROLES:
        return render(request, "accounts/forbidden.html", status=403)
    return render(request, "proxy/deployments.html", {"refresh_seconds": REFRESH_SECONDS})


async def deployments_data(request: HttpRequest) -> JsonResponse:
    user = await request.auser()
    if not user.is_authenticated:
        return JsonResponse({"error": "login required"}, status=401)
    identity = await sync_to_async(portal_identity)(user=user)
    if identity.role not in VIEWER_ROLES:
        return JsonResponse({"error": "forbidden"}, status=403)
    await catalog.ensure_loaded()
    models = sorted(catalog.models.values(), key=lambda m: m.name)
    stats = await board.fleet_stats()
    return JsonResponse({"models": overview(models, stats)})
