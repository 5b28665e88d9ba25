"""Admin: prices editable; tiers and subscriptions read-mostly (actions call services);
statements read-only (rollup runs own them)."""

from django.contrib import admin
from django.http import HttpRequest

from apps.billing.models import (
    ModelPrice,
    Statement,
    Subscription,
    Tier,
)
from apps.billing.services import subscription_change, tier_save
from apps.billing.services.subscriptions import TIER_FIELDS
from apps.billing.subjects import subject_of


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    list_display = [
        "model_name",
        "provider",
        "mode",
        "input_cost_per_token",
        "output_cost_per_token",
        "cached_input_cost_per_token",
        "cache_write_cost_per_token",
        "effective_from",
    ]
    list_filter = ["provider", "mode", "effective_from"]
    search_fields = ["model_name"]
    ordering = ["model_name", "-effective_from"]
    date_hierarchy = "effective_from"


class ReadMostlyAdmin(admin.ModelAdmin):
    """Rows written through services (which audit): viewable, never added or deleted by hand."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


class ReadOnlyAdmin(ReadMostlyAdmin):
    """Rows written only by rollup runs: viewable, never edited or deleted by hand."""

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(Tier)
class TierAdmin(ReadMostlyAdmin):
    """Read-mostly: edits go through the portal's tier page (`tier_save`, which audits).
    Statements and subscriptions PROTECT their tier, so it is deactivated, never deleted."""

    list_display = [
        "name",
        "monthly_token_allowance",
        "monthly_price",
        "overage_price_per_1k_tokens",
        "hard_cap",
        "is_active",
        "updated_at",
    ]
    list_filter = ["is_active", "hard_cap"]
    search_fields = ["name"]
    readonly_fields = [*TIER_FIELDS, "created_at", "updated_at"]
    actions = ["deactivate"]

    @admin.action(description="Deactivate selected tiers (through tier_save)")
    def deactivate(self, request: HttpRequest, queryset) -> None:
        for tier in queryset:
            tier_save(tier=tier, actor=request.user, is_active=False)
        self.message_user(request, f"{queryset.count()} tier(s) deactivated.")


@admin.register(Subscription)
class SubscriptionAdmin(ReadMostlyAdmin):
    """Read-mostly: a tier change closes and opens rows (`subscription_change`), so the
    only action ends a subscription through that service. Deleting a row would rewrite
    history and the statements computed from it."""

    list_display = ["subject_key", "subject_type", "tier", "starts_at", "ends_at", "created_by"]
    list_filter = ["subject_type", "tier", ("ends_at", admin.EmptyFieldListFilter)]
    search_fields = ["subject_key", "customer_id"]
    list_select_related = ["tier", "created_by"]
    date_hierarchy = "starts_at"
    readonly_fields = [
        "tier",
        "subject_type",
        "subject_key",
        "team",
        "virtual_account",
        "customer_id",
        "starts_at",
        "ends_at",
        "created_by",
        "created_at",
        "updated_at",
    ]
    actions = ["end_now"]

    @admin.action(description="End selected open subscriptions now")
    def end_now(self, request: HttpRequest, queryset) -> None:
        ended = 0
        for sub in queryset.filter(ends_at__isnull=True).select_related("team", "virtual_account"):
            subscription_change(subject=subject_of(sub), tier=None, actor=request.user)
            ended += 1
        self.message_user(request, f"{ended} subscription(s) ended.")


@admin.register(Statement)
class StatementAdmin(ReadOnlyAdmin):
    list_display = [
        "month",
        "subject_label",
        "subject_type",
        "tier",
        "allowance_tokens",
        "used_tokens",
        "overage_tokens",
        "amount",
        "computed_at",
    ]
    list_filter = ["month", "subject_type", "tier"]
    list_select_related = ["tier"]
    search_fields = ["subject_key", "subject_label"]
