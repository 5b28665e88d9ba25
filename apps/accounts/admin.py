from django import forms
from django.contrib import admin, messages
from django.contrib.auth import admin as auth_admin
from django.contrib.auth import get_user_model

from .exceptions import TagsError
from .models import (
    ApiKey,
    AuditLog,
    Membership,
    RotationPolicy,
    TagDefinition,
    Team,
    VirtualAccount,
)
from .services import api_key_revoke, invalidate_after_commit, validate_tags


class DefaultTagsAdminForm(forms.ModelForm):
    """The admin edits rows directly, so default tags get the services' rule here."""

    def clean_default_tags(self):
        try:
            return validate_tags(self.cleaned_data.get("default_tags"))
        except TagsError as exc:
            raise forms.ValidationError(str(exc)) from exc


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    form = DefaultTagsAdminForm
    list_display = ("name", "slug", "created_at")
    search_fields = ("name", "slug")
    prepopulated_fields = {"slug": ("name",)}
    inlines = [MembershipInline]

    def save_model(self, request, obj, form, change) -> None:
        super().save_model(request, obj, form, change)
        # Saved past the services: gateways copy the team's tags and settings into each of
        # its cached keys, so they must re-read them.
        if change:
            invalidate_after_commit(team_id=obj.pk)


@admin.register(VirtualAccount)
class VirtualAccountAdmin(admin.ModelAdmin):
    form = DefaultTagsAdminForm
    list_display = ("name", "team", "is_active", "created_at")
    list_filter = ("team", "is_active")
    search_fields = ("name",)

    def save_model(self, request, obj, form, change) -> None:
        super().save_model(request, obj, form, change)
        # Saved past the services: its keys' cached copies hold its tags and active flag.
        if change:
            _invalidate_keys_of(obj)


User = get_user_model()
admin.site.unregister(User)


@admin.register(User)
class UserAdmin(auth_admin.UserAdmin):
    """Django's user admin; deactivating someone here stops their keys on every gateway."""

    def save_model(self, request, obj, form, change) -> None:
        super().save_model(request, obj, form, change)
        if change:  # a new user has no keys yet
            _invalidate_keys_of(obj)


def _invalidate_keys_of(owner) -> None:
    """Gateways re-read the cached keys of a user or virtual account saved here."""
    invalidate_after_commit(key_hashes=list(owner.api_keys.values_list("key_hash", flat=True)))


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys are issued and changed by services (portal, `keys` command); the admin shows them
    and can revoke through the service, so the audit log and the proxy's caches follow."""

    list_display = (
        "name",
        "prefix",
        "team",
        "user",
        "virtual_account",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
    )
    list_filter = ("team",)
    search_fields = ("name", "prefix")
    exclude = ("key_hash",)
    actions = ["revoke_keys"]

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in ApiKey._meta.fields if f.name != "key_hash"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.action(description="Revoke selected keys")
    def revoke_keys(self, request, queryset) -> None:
        for key in queryset:
            api_key_revoke(key=key, actor=request.user)
        self.message_user(request, f"Revoked {queryset.count()} key(s).", messages.SUCCESS)


@admin.register(TagDefinition)
class TagDefinitionAdmin(admin.ModelAdmin):
    list_display = ("key", "owner_team", "owner_user", "updated_at")
    search_fields = ("key", "description")
    readonly_fields = [f.name for f in TagDefinition._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(RotationPolicy)
class RotationPolicyAdmin(admin.ModelAdmin):
    list_display = ("__str__", "every_days", "grace_hours", "last_run_at")
    readonly_fields = [f.name for f in RotationPolicy._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(AuditLog)
class AuditLogAdmin(admin.ModelAdmin):
    """Append-only: rows are written by services and can be read, never changed or deleted."""

    list_display = ("created_at", "actor_label", "action", "object_type", "object_repr", "team")
    list_filter = ("action", "object_type", "team")
    search_fields = ("actor_label", "object_repr", "object_id")
    date_hierarchy = "created_at"

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
