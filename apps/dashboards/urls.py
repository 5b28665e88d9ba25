from django.urls import path

from . import views

app_name = "dashboards"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("cost/", views.cost, name="cost"),
    path("latency/", views.latency, name="latency"),
    path("errors/", views.errors, name="errors"),
    path("tags/", views.tags, name="tags"),
    path("csv/<slug:dataset>/", views.chart_csv, name="csv"),
]
