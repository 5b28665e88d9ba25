from django.urls import path

from . import views

app_name = "usage"

urlpatterns = [
    path("dead-letters/", views.dead_letters, name="dead_letters"),
    path("dead-letters/replay/", views.dead_letters_replay, name="dead_letters_replay"),
]
