from django import forms
from django.contrib import admin

from .models import Deployment, GatewayModel


class DeploymentForm(forms.ModelForm):
    """base_url and api_key_env are checked by the model fields' validators (the outbound
    guard, the api_key_env naming rule), which a ModelForm runs."""

    base_url = forms.URLField(max_length=500, assume_scheme="https")

    class Meta:
        model = Deployment
        fields = (
            "name",
            "provider",
            "upstream_model",
            "base_url",
            "api_version",
            "api_key_env",
            "timeout_seconds",
            "priority",
            "weight",
            "price_model_name",
            "input_cost_per_token",
            "output_cost_per_token",
            "cached_input_cost_per_token",
            "cache_write_cost_per_token",
            "extra",
            "is_active",
        )


class DeploymentInline(admin.StackedInline):
    model = Deployment
    form = DeploymentForm
    extra = 0


@admin.register(GatewayModel)
class GatewayModelAdmin(admin.ModelAdmin):
    list_display = ("name", "mode", "routing_strategy", "is_active", "updated_at")
    list_filter = ("mode", "is_active")
    search_fields = ("name",)
    inlines = [DeploymentInline]
