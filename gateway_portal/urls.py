from django.contrib import admin
from django.urls import include, path

from . import health
from .api import api

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("api/admin/", include("apps.accounts.rest_urls")),
    path("api/", api.urls),
    path("quotas/", include("apps.quotas.urls")),
    path("deployments/", include("apps.proxy.urls")),
    path("billing/", include("apps.billing.urls")),
    path("dashboards/", include("apps.dashboards.urls")),
    path("usage/", include("apps.usage.urls")),
    path("", include("apps.accounts.urls")),
]
