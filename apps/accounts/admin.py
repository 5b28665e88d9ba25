from django.contrib import admin

from .models import ApiKey, Membership, Team, VirtualAccount


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "created_at")
    search_fields = ("name", "slug")
    prepopulated_fields = {"slug": ("name",)}
    inlines = [MembershipInline]


@admin.register(VirtualAccount)
class VirtualAccountAdmin(admin.ModelAdmin):
    list_display = ("name", "team", "is_active", "created_at")
    list_filter = ("team", "is_active")
    search_fields = ("name",)


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys are issued by services (portal, issue_key); the admin only shows them."""

    list_display = ("name", "prefix", "team", "user", "virtual_account", "created_at", "revoked_at")
    list_filter = ("team",)
    search_fields = ("name", "prefix")
    exclude = ("key_hash",)
    readonly_fields = ("prefix", "lineage_id", "rotated_from", "created_at", "last_used_at")

    def has_add_permission(self, request) -> bool:
        return False
