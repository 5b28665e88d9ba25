from django.urls import path

from . import views

app_name = "proxy"

urlpatterns = [
    path("", views.deployments, name="deployments"),
    path("data/", views.deployments_data, name="deployments_data"),
]
