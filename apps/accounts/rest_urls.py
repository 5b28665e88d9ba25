"""URLs of the management API, mounted at /api/admin/ (OpenAPI schema at schema/)."""

from django.urls import include, path
from rest_framework.permissions import IsAuthenticated
from rest_framework.routers import DefaultRouter
from rest_framework.schemas import get_schema_view

from . import rest

router = DefaultRouter()
router.register("teams", rest.TeamViewSet, basename="team")
router.register("memberships", rest.MembershipViewSet, basename="membership")
router.register("virtual-accounts", rest.VirtualAccountViewSet, basename="virtualaccount")
router.register("keys", rest.ApiKeyViewSet, basename="apikey")

schema_view = get_schema_view(
    title="Tollgate management API",
    description="Teams, memberships, virtual accounts and API keys. Session or token auth.",
    version="1.0",
    # The schema covers only this API, with its full paths.
    patterns=[path("api/admin/", include(router.urls))],
    public=True,
    permission_classes=[IsAuthenticated],
)

urlpatterns = [
    path("schema/", schema_view, name="admin-api-schema"),
    *router.urls,
]
