"""Team pages: list, create, detail (members, virtual accounts, keys, tags, tier, rotation
policy) and the virtual account pages. Admins manage every team, team admins the teams
they administer."""

from urllib.parse import urlencode

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db import IntegrityError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from apps.usage.regions import is_multi_region, region_names, region_or_default

from .. import selectors
from ..exceptions import AccountsError
from ..forms import (
    MembershipAddForm,
    MembershipRoleForm,
    RotationPolicyForm,
    TeamCreateForm,
    TeamEditForm,
    TeamRegionForm,
    VirtualAccountCreateForm,
    VirtualAccountEditForm,
)
from ..permissions import (
    ADMIN_ONLY,
    TEAM_ROLES,
    assignable_roles,
    can_change_membership,
    portal_view,
)
from ..services import (
    membership_remove,
    membership_set,
    rotation_policy_remove,
    rotation_policy_set,
    team_create,
    team_region_set,
    team_update,
    virtual_account_create,
    virtual_account_update,
)


def _managed_team(identity, pk: int):
    return get_object_or_404(selectors.teams_administered_by(identity=identity), pk=pk)


@portal_view(TEAM_ROLES)
def team_list(request: HttpRequest, identity) -> HttpResponse:
    form = TeamCreateForm() if identity.is_admin else None
    rows = selectors.team_list(identity=identity)
    return render(request, "accounts/teams.html", {"teams": rows, "form": form})


@portal_view(ADMIN_ONLY)
def team_create_view(request: HttpRequest, identity) -> HttpResponse:
    form = TeamCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            team = team_create(actor=request.user, **form.cleaned_data)
        except (AccountsError, IntegrityError):
            form.add_error(None, "A team with this name or slug already exists.")
        else:
            messages.success(request, f"Team {team} created.")
            return redirect("team_detail", pk=team.pk)
    return render(
        request, "accounts/team_create.html", {"form": form}, status=400 if form.errors else 200
    )


def _team_context(request, identity, team, **forms) -> dict:
    roles = assignable_roles(identity)
    members = list(selectors.team_members(identity=identity, team=team))
    for membership in members:
        membership.changeable = can_change_membership(identity, membership)
    rotation = selectors.team_rotation_schedule(team=team)
    policy = rotation.policy
    return {
        "team": team,
        "members": members,
        "role_choices": [(r.value, r.label) for r in roles],
        "virtual_accounts": selectors.virtual_accounts_visible_to(identity=identity).filter(
            team=team
        ),
        "keys": selectors.api_key_list(user=request.user, identity=identity, team_id=team.pk),
        "edit_form": forms.get("edit_form")
        or TeamEditForm(
            initial={
                "name": team.name,
                "default_tags": team.default_tags,
                "required_tag_keys": team.required_tag_keys,
                "allow_request_logging": team.allow_request_logging,
            }
        ),
        "member_form": forms.get("member_form") or MembershipAddForm(role_choices=roles),
        "data_region": region_or_default(team.data_region),
        "region_form": (
            forms.get("region_form")
            or TeamRegionForm(
                regions=region_names(),
                initial={"data_region": region_or_default(team.data_region)},
            )
        )
        if identity.is_admin and is_multi_region()
        else None,
        "va_form": forms.get("va_form") or VirtualAccountCreateForm(),
        "subscription": selectors.team_current_subscription(team=team),
        # Billing pages are admin-only; the subject key is billing's "team:<id>".
        "billing_subject_query": urlencode({"subject": f"team:{team.pk}"})
        if identity.is_admin
        else "",
        "rotation": rotation,
        "rotation_form": forms.get("rotation_form")
        or RotationPolicyForm(
            initial={"every_days": policy.every_days, "grace_hours": policy.grace_hours}
            if policy
            else None
        ),
    }


def _team_page(request, identity, team, status: int = 200, **forms) -> HttpResponse:
    context = _team_context(request, identity, team, **forms)
    return render(request, "accounts/team_detail.html", context, status=status)


@portal_view(TEAM_ROLES)
def team_detail(request: HttpRequest, identity, pk: int) -> HttpResponse:
    return _team_page(request, identity, _managed_team(identity, pk))


@require_POST
@portal_view(TEAM_ROLES)
def team_edit(request: HttpRequest, identity, pk: int) -> HttpResponse:
    team = _managed_team(identity, pk)
    form = TeamEditForm(request.POST)
    if form.is_valid():
        try:
            team_update(team=team, actor=request.user, **form.cleaned_data)
        except ValidationError as exc:
            for field, errors in exc.message_dict.items():
                form.add_error(field if field in form.fields else None, errors)
        except (AccountsError, IntegrityError) as exc:
            form.add_error(None, str(exc) or "Could not save the team.")
        else:
            messages.success(request, "Team saved.")
            return redirect("team_detail", pk=team.pk)
    return _team_page(request, identity, team, status=400, edit_form=form)


@require_POST
@portal_view(ADMIN_ONLY)
def team_region(request: HttpRequest, identity, pk: int) -> HttpResponse:
    team = _managed_team(identity, pk)
    form = TeamRegionForm(request.POST, regions=region_names())
    if form.is_valid():
        try:
            team_region_set(team=team, region=form.cleaned_data["data_region"], actor=request.user)
        except AccountsError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"New usage of {team} is kept in {team.data_region}.")
            return redirect("team_detail", pk=team.pk)
    return _team_page(request, identity, team, status=400, region_form=form)


@require_POST
@portal_view(TEAM_ROLES)
def member_add(request: HttpRequest, identity, pk: int) -> HttpResponse:
    team = _managed_team(identity, pk)
    form = MembershipAddForm(request.POST, role_choices=assignable_roles(identity))
    if form.is_valid():
        user = selectors.user_by_username(identity=identity, username=form.cleaned_data["username"])
        existing = selectors.team_members(identity=identity, team=team).filter(user=user).first()
        if user is None:
            form.add_error("username", "No active user with this username.")
        elif existing is not None and not can_change_membership(identity, existing):
            form.add_error("username", "Only an admin can change this member's role.")
        else:
            try:
                membership_set(
                    user=user, team=team, role=form.cleaned_data["role"], actor=request.user
                )
            except AccountsError as exc:
                form.add_error(None, str(exc))
            else:
                messages.success(request, f"{user.get_username()} is now a member of {team}.")
                return redirect("team_detail", pk=team.pk)
    return _team_page(request, identity, team, status=400, member_form=form)


def _changeable_membership(identity, team, user_id: int):
    membership = get_object_or_404(
        selectors.team_members(identity=identity, team=team), user_id=user_id
    )
    return membership if can_change_membership(identity, membership) else None


@require_POST
@portal_view(TEAM_ROLES)
def member_role(request: HttpRequest, identity, pk: int, user_id: int) -> HttpResponse:
    team = _managed_team(identity, pk)
    membership = _changeable_membership(identity, team, user_id)
    form = MembershipRoleForm(request.POST, role_choices=assignable_roles(identity))
    if membership is None:
        return render(request, "accounts/forbidden.html", status=403)
    if form.is_valid():
        membership_set(
            user=membership.user, team=team, role=form.cleaned_data["role"], actor=request.user
        )
        messages.success(request, f"Role of {membership.user.get_username()} changed.")
    else:
        messages.error(request, "Choose a role you may grant.")
    return redirect("team_detail", pk=team.pk)


@require_POST
@portal_view(TEAM_ROLES)
def team_rotation_policy(request: HttpRequest, identity, pk: int) -> HttpResponse:
    team = _managed_team(identity, pk)
    form = RotationPolicyForm(request.POST)
    if form.is_valid():
        try:
            rotation_policy_set(team=team, actor=request.user, **form.cleaned_data)
        except AccountsError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, "Rotation policy saved.")
            return redirect("team_detail", pk=team.pk)
    return _team_page(request, identity, team, status=400, rotation_form=form)


@portal_view(TEAM_ROLES)
def team_rotation_policy_remove(request: HttpRequest, identity, pk: int) -> HttpResponse:
    team = _managed_team(identity, pk)
    policy = selectors.team_rotation_schedule(team=team).policy
    if policy is None:
        raise Http404
    if request.method == "POST":
        rotation_policy_remove(policy=policy, actor=request.user)
        messages.success(request, "Rotation policy removed.")
        return redirect("team_detail", pk=team.pk)
    return render(
        request,
        "accounts/rotation_policy_remove.html",
        {
            "policy": policy,
            "target": f"team {team.name}",
            "cancel_url": reverse("team_detail", args=[team.pk]),
        },
    )


@portal_view(TEAM_ROLES)
def member_remove(request: HttpRequest, identity, pk: int, user_id: int) -> HttpResponse:
    team = _managed_team(identity, pk)
    membership = _changeable_membership(identity, team, user_id)
    if membership is None:
        return render(request, "accounts/forbidden.html", status=403)
    error = ""
    if request.method == "POST":
        try:
            revoked = membership_remove(user=membership.user, team=team, actor=request.user)
        except AccountsError as exc:
            error = str(exc)
        else:
            note = f" {len(revoked)} of their keys revoked." if revoked else ""
            messages.success(
                request, f"{membership.user.get_username()} removed from {team}.{note}"
            )
            return redirect("team_detail", pk=team.pk)
    keys = selectors.keys_revoked_on_member_removal(user=membership.user, team=team)
    return render(
        request,
        "accounts/member_remove.html",
        {"team": team, "membership": membership, "error": error, "keys": keys},
    )


# --- Virtual accounts -------------------------------------------------------------------


@portal_view(TEAM_ROLES)
def virtual_account_list(request: HttpRequest, identity) -> HttpResponse:
    rows = selectors.virtual_accounts_visible_to(identity=identity).order_by("team__name", "name")
    return render(request, "accounts/virtual_accounts.html", {"virtual_accounts": rows})


@require_POST
@portal_view(TEAM_ROLES)
def virtual_account_create_view(request: HttpRequest, identity, pk: int) -> HttpResponse:
    team = _managed_team(identity, pk)
    form = VirtualAccountCreateForm(request.POST)
    if form.is_valid():
        try:
            virtual_account_create(team=team, actor=request.user, **form.cleaned_data)
        except (AccountsError, IntegrityError):
            form.add_error("name", "A virtual account with this name already exists.")
        else:
            messages.success(request, f"Virtual account {form.cleaned_data['name']} created.")
            return redirect("team_detail", pk=team.pk)
    return _team_page(request, identity, team, status=400, va_form=form)


def _managed_virtual_account(identity, pk: int):
    return get_object_or_404(selectors.virtual_accounts_visible_to(identity=identity), pk=pk)


@portal_view(TEAM_ROLES)
def virtual_account_edit(request: HttpRequest, identity, pk: int) -> HttpResponse:
    va = _managed_virtual_account(identity, pk)
    form = VirtualAccountEditForm(
        request.POST or None,
        initial={"description": va.description, "default_tags": va.default_tags},
    )
    if request.method == "POST" and form.is_valid():
        try:
            virtual_account_update(virtual_account=va, actor=request.user, **form.cleaned_data)
        except AccountsError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Virtual account {va.name} saved.")
            return redirect("team_detail", pk=va.team_id)
    status = 400 if form.errors else 200
    return render(
        request, "accounts/virtual_account_edit.html", {"va": va, "form": form}, status=status
    )


@portal_view(TEAM_ROLES)
def virtual_account_active(request: HttpRequest, identity, pk: int) -> HttpResponse:
    """Confirm page (GET) and action (POST) to deactivate or reactivate an account."""
    va = _managed_virtual_account(identity, pk)
    if request.method == "POST":
        activate = not va.is_active
        virtual_account_update(virtual_account=va, actor=request.user, is_active=activate)
        state = "reactivated" if activate else "deactivated"
        messages.success(request, f"Virtual account {va.name} {state}.")
        return redirect("team_detail", pk=va.team_id)
    return render(request, "accounts/virtual_account_active.html", {"va": va})
