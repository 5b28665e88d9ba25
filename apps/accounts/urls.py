from django.contrib.auth import views as auth_views
from django.urls import path

from .views import audit, home, keys, tags, teams, users

urlpatterns = [
    path("", home.home, name="home"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    # Keys
    path("keys/", keys.key_list, name="keys"),
    path("keys/new/", keys.key_create, name="key_create"),
    path("keys/<int:pk>/", keys.key_detail, name="key_detail"),
    path("keys/<int:pk>/edit/", keys.key_edit, name="key_edit"),
    path("keys/<int:pk>/expiry/", keys.key_expiry, name="key_expiry"),
    path("keys/<int:pk>/rotate/", keys.key_rotate, name="key_rotate"),
    path("keys/<int:pk>/revoke/", keys.key_revoke, name="key_revoke"),
    path("keys/<int:pk>/reveal/", keys.key_reveal_secret, name="key_reveal_secret"),
    path("keys/<int:pk>/rotation-policy/", keys.key_rotation_policy, name="key_rotation_policy"),
    path(
        "keys/<int:pk>/rotation-policy/remove/",
        keys.key_rotation_policy_remove,
        name="key_rotation_policy_remove",
    ),
    # Teams, members and virtual accounts
    path("teams/", teams.team_list, name="teams"),
    path("teams/new/", teams.team_create_view, name="team_create"),
    path("teams/<int:pk>/", teams.team_detail, name="team_detail"),
    path("teams/<int:pk>/edit/", teams.team_edit, name="team_edit"),
    path("teams/<int:pk>/region/", teams.team_region, name="team_region"),
    path("teams/<int:pk>/members/", teams.member_add, name="member_add"),
    path(
        "teams/<int:pk>/rotation-policy/", teams.team_rotation_policy, name="team_rotation_policy"
    ),
    path(
        "teams/<int:pk>/rotation-policy/remove/",
        teams.team_rotation_policy_remove,
        name="team_rotation_policy_remove",
    ),
    path("teams/<int:pk>/members/<int:user_id>/role/", teams.member_role, name="member_role"),
    path("teams/<int:pk>/members/<int:user_id>/remove/", teams.member_remove, name="member_remove"),
    path(
        "teams/<int:pk>/virtual-accounts/",
        teams.virtual_account_create_view,
        name="virtual_account_create",
    ),
    path("virtual-accounts/", teams.virtual_account_list, name="virtual_accounts"),
    path(
        "virtual-accounts/<int:pk>/edit/", teams.virtual_account_edit, name="virtual_account_edit"
    ),
    path(
        "virtual-accounts/<int:pk>/active/",
        teams.virtual_account_active,
        name="virtual_account_active",
    ),
    # Users and roles (admin)
    path("users/", users.user_list, name="users"),
    path("users/<int:pk>/", users.user_detail, name="user_detail"),
    # Tag glossary and audit log
    path("tags/", tags.tag_glossary, name="tags"),
    path("audit/", audit.audit_list, name="audit"),
    path("audit/export.csv", audit.audit_export, name="audit_export"),
]
