"""Key pages: list, create (secret shown once), edit, expiry, rotate, revoke, the rotation
policy and the one-time reveal of a scheduled rotation's secret.

A secret is rendered only in the response to the POST that created or revealed it, never
stored in the session or a redirect target, and that response is marked `no-store`.
"""

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from .. import selectors
from ..exceptions import AccountsError
from ..forms import (
    ApiKeyCreateForm,
    ApiKeyEditForm,
    ApiKeyExpiryForm,
    ApiKeyRotateForm,
    RotationPolicyForm,
)
from ..permissions import KEY_ROLES, administers_team, can_edit_enforced_tags, portal_view
from ..services import (
    api_key_issue,
    api_key_revoke,
    api_key_rotate,
    api_key_update,
    pending_secret_reveal,
    rotation_policy_remove,
    rotation_policy_set,
)


def _visible_key(request: HttpRequest, identity, pk: int):
    return get_object_or_404(
        selectors.api_keys_visible_to(user=request.user, identity=identity), pk=pk
    )


def _secret_page(request: HttpRequest, *, key, secret: str, rotated_from=None) -> HttpResponse:
    response = render(
        request,
        "accounts/key_secret.html",
        {
            "key": key,
            "secret": secret,
            "rotated_from": rotated_from,
            "base_url": request.build_absolute_uri("/v1"),
        },
    )
    response["Cache-Control"] = "no-store"
    return response


@portal_view(KEY_ROLES)
def key_list(request: HttpRequest, identity) -> HttpResponse:
    rows = selectors.api_key_list(user=request.user, identity=identity)
    return render(request, "accounts/keys.html", {"keys": rows})


@portal_view(KEY_ROLES)
def key_create(request: HttpRequest, identity) -> HttpResponse:
    form = ApiKeyCreateForm(
        request.POST or None,
        owner_choices=selectors.key_owner_choices(user=request.user, identity=identity),
        team_choices=selectors.key_team_choices(user=request.user, identity=identity),
        model_choices=selectors.gateway_model_names(),
    )
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        owner: dict = {}
        if data["owner"] == "self":
            owner["user"] = request.user
            owner["team"] = get_object_or_404(
                selectors.teams_visible_to(identity=identity), pk=data["team"]
            )
        else:
            owner["virtual_account"] = get_object_or_404(
                selectors.virtual_accounts_visible_to(identity=identity).filter(is_active=True),
                pk=data["owner"].removeprefix("va:"),
            )
        try:
            key, secret = api_key_issue(
                name=data["name"],
                default_tags=data["default_tags"],
                allowed_models=data["allowed_models"],
                expires_in_days=data["expires_in_days"],
                actor=request.user,
                **owner,
            )
        except AccountsError as exc:
            form.add_error(None, str(exc))
        else:
            return _secret_page(request, key=key, secret=secret)
    return render(request, "accounts/key_form.html", {"form": form})


def _detail_context(request, identity, key, **forms) -> dict:
    may_enforce = can_edit_enforced_tags(identity, key)
    edit_form = forms.get("edit_form") or ApiKeyEditForm(
        initial={
            "name": key.name,
            "allowed_models": key.allowed_models,
            "default_tags": key.default_tags,
            "enforced_tag_keys": key.enforced_tag_keys,
        },
        model_choices=selectors.gateway_model_names(),
        may_enforce_tags=may_enforce,
    )
    expiry_form = forms.get("expiry_form") or ApiKeyExpiryForm(
        initial={"expires_at": key.expires_at}
    )
    lineage = list(
        selectors.api_keys_visible_to(user=request.user, identity=identity).filter(
            lineage_id=key.lineage_id
        )
    )
    rotation = selectors.key_rotation_schedule(key=key)
    own_policy = rotation.policy if rotation.policy and not rotation.inherited else None
    is_current = key.revoked_at is None and not any(k.rotated_from_id == key.pk for k in lineage)
    rotation_form = forms.get("rotation_form") or RotationPolicyForm(
        initial={"every_days": own_policy.every_days, "grace_hours": own_policy.grace_hours}
        if own_policy
        else None
    )
    return {
        "key": key,
        "edit_form": edit_form,
        "expiry_form": expiry_form,
        "lineage": lineage,
        "pending_secret": selectors.pending_secret_for(identity=identity, key=key),
        "rotation": rotation,
        "own_policy": own_policy,
        # A superseded key's policy already moved to its successor; manage it there.
        "may_manage_rotation": is_current and administers_team(identity, key.team_id),
        "rotation_form": rotation_form,
    }


@portal_view(KEY_ROLES)
def key_detail(request: HttpRequest, identity, pk: int) -> HttpResponse:
    key = _visible_key(request, identity, pk)
    return render(request, "accounts/key_detail.html", _detail_context(request, identity, key))


@require_POST
@portal_view(KEY_ROLES)
def key_edit(request: HttpRequest, identity, pk: int) -> HttpResponse:
    key = _visible_key(request, identity, pk)
    may_enforce = can_edit_enforced_tags(identity, key)
    form = ApiKeyEditForm(
        request.POST,
        initial={"allowed_models": key.allowed_models},
        model_choices=selectors.gateway_model_names(),
        may_enforce_tags=may_enforce,
    )
    if form.is_valid():
        data = form.cleaned_data
        changes = {
            "name": data["name"],
            "allowed_models": data["allowed_models"],
            "default_tags": data["default_tags"],
        }
        if may_enforce:
            changes["enforced_tag_keys"] = data["enforced_tag_keys"]
        try:
            api_key_update(key=key, actor=request.user, **changes)
        except AccountsError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, "Key updated.")
            return redirect("key_detail", pk=key.pk)
    context = _detail_context(request, identity, key, edit_form=form)
    return render(request, "accounts/key_detail.html", context, status=400)


@require_POST
@portal_view(KEY_ROLES)
def key_expiry(request: HttpRequest, identity, pk: int) -> HttpResponse:
    key = _visible_key(request, identity, pk)
    form = ApiKeyExpiryForm(request.POST)
    if form.is_valid():
        try:
            api_key_update(key=key, actor=request.user, expires_at=form.cleaned_data["expires_at"])
        except AccountsError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, "Expiry saved.")
            return redirect("key_detail", pk=key.pk)
    context = _detail_context(request, identity, key, expiry_form=form)
    return render(request, "accounts/key_detail.html", context, status=400)


@portal_view(KEY_ROLES)
def key_rotate(request: HttpRequest, identity, pk: int) -> HttpResponse:
    key = _visible_key(request, identity, pk)
    form = ApiKeyRotateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            new_key, secret = api_key_rotate(
                key=key, actor=request.user, grace_hours=form.cleaned_data["grace_hours"]
            )
        except AccountsError as exc:
            form.add_error(None, str(exc))
        else:
            # `new_key.rotated_from` carries the old key's grace-period expiry; `key` does not.
            return _secret_page(
                request, key=new_key, secret=secret, rotated_from=new_key.rotated_from
            )
    return render(request, "accounts/key_rotate.html", {"key": key, "form": form})


@portal_view(KEY_ROLES)
def key_revoke(request: HttpRequest, identity, pk: int) -> HttpResponse:
    key = _visible_key(request, identity, pk)
    error = ""
    if request.method == "POST":
        try:
            api_key_revoke(key=key, actor=request.user)
        except AccountsError as exc:
            error = str(exc)
        else:
            messages.success(request, f"Key {key.prefix}… revoked. It stops working at once.")
            return redirect("key_detail", pk=key.pk)
    return render(request, "accounts/key_revoke.html", {"key": key, "error": error})


@portal_view(KEY_ROLES)
def key_reveal_secret(request: HttpRequest, identity, pk: int) -> HttpResponse:
    """Confirm (GET), then show once (POST) the secret a scheduled rotation created.

    Anyone but the owner (or, for a virtual account's key, a team admin of its team) gets
    a 404, like for a key they cannot see.
    """
    key = _visible_key(request, identity, pk)
    if not selectors.may_reveal_pending_secret(identity=identity, key=key):
        raise Http404
    if request.method == "POST":
        try:
            secret = pending_secret_reveal(key=key, actor=request.user)
        except AccountsError as exc:
            context = {"key": key, "pending": None, "error": str(exc)}
            return render(request, "accounts/key_reveal.html", context, status=410)
        return _secret_page(request, key=key, secret=secret, rotated_from=key.rotated_from)
    pending = selectors.pending_secret_for(identity=identity, key=key)
    if pending is None or pending.key_id != key.pk:
        context = {"key": key, "pending": None, "error": "No secret is waiting for this key."}
        return render(request, "accounts/key_reveal.html", context, status=410)
    return render(request, "accounts/key_reveal.html", {"key": key, "pending": pending})


def _rotation_managed_key(request: HttpRequest, identity, pk: int):
    """The key, if the caller may manage its rotation policy; None means 403."""
    key = _visible_key(request, identity, pk)
    return key if administers_team(identity, key.team_id) else None


@require_POST
@portal_view(KEY_ROLES)
def key_rotation_policy(request: HttpRequest, identity, pk: int) -> HttpResponse:
    key = _rotation_managed_key(request, identity, pk)
    if key is None:
        return render(request, "accounts/forbidden.html", status=403)
    form = RotationPolicyForm(request.POST)
    if form.is_valid():
        try:
            rotation_policy_set(key=key, actor=request.user, **form.cleaned_data)
        except AccountsError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, "Rotation policy saved.")
            return redirect("key_detail", pk=key.pk)
    context = _detail_context(request, identity, key, rotation_form=form)
    return render(request, "accounts/key_detail.html", context, status=400)


@portal_view(KEY_ROLES)
def key_rotation_policy_remove(request: HttpRequest, identity, pk: int) -> HttpResponse:
    key = _rotation_managed_key(request, identity, pk)
    if key is None:
        return render(request, "accounts/forbidden.html", status=403)
    schedule = selectors.key_rotation_schedule(key=key)
    if schedule.policy is None or schedule.inherited:
        raise Http404
    if request.method == "POST":
        rotation_policy_remove(policy=schedule.policy, actor=request.user)
        messages.success(request, "Rotation policy removed.")
        return redirect("key_detail", pk=key.pk)
    return render(
        request,
        "accounts/rotation_policy_remove.html",
        {
            "policy": schedule.policy,
            "target": f"key {key.name} ({key.prefix}…)",
            "cancel_url": reverse("key_detail", args=[key.pk]),
        },
    )
