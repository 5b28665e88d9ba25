from django.contrib import admin

from apps.billing.models import ModelPrice


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    list_display = [
        "model_name",
        "provider",
        "mode",
        "input_cost_per_token",
        "output_cost_per_token",
        "cached_input_cost_per_token",
        "effective_from",
    ]
    list_filter = ["provider", "mode", "effective_from"]
    search_fields = ["model_name"]
    ordering = ["model_name", "-effective_from"]
    date_hierarchy = "effective_from"
