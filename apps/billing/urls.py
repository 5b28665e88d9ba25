from django.urls import path

from . import views

app_name = "billing"

urlpatterns = [
    path("", views.statements, name="statements"),
    path("statements.csv", views.statements_csv, name="statements_csv"),
    path("insights/", views.insights, name="insights"),
    path("tiers/", views.tiers, name="tiers"),
    path("tiers/<int:tier_id>/", views.tier_edit, name="tier_edit"),
    path("subscriptions/", views.subscriptions, name="subscriptions"),
    path("subscriptions/history/", views.subscription_history_page, name="history"),
]
