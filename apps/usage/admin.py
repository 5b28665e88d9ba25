from django.contrib import admin

from .models import UsageCubeDaily, UsageRecord


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    """Usage is money: rows are read-only here."""

    list_display = (
        "created_at",
        "model",
        "team_id",
        "status_code",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "latency_ms",
        "tags",
    )
    list_filter = ("model", "status_code", "request_type", "is_stream")
    search_fields = ("request_id", "model", "end_user")
    date_hierarchy = "created_at"

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(UsageCubeDaily)
class UsageCubeDailyAdmin(UsageRecordAdmin):
    """The daily rollup every total is read from; rebuilt by the rollup run, so read-only."""

    list_display = (
        "day",
        "team_id",
        "user_id",
        "virtual_account_id",
        "model",
        "provider",
        "requests",
        "errors",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "computed_at",
    )
    list_filter = ("day", "provider", "is_stream")
    search_fields = ("model",)
    date_hierarchy = "day"
