from django.urls import path

from . import views

app_name = "quotas"

urlpatterns = [
    path("", views.rules, name="rules"),
    path("edit/", views.edit, name="edit"),
    path("versions/<int:version>/rollback/", views.rollback, name="rollback"),
]
