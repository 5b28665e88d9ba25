"""Key pages: list, create (secret shown once), edit, expiry, rotate and revoke.

A secret is rendered only in the response to the POST that created it, never stored in the
session or a redirect target, and that response is marked `no-store`.
"""

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from .. import selectors
from ..exceptions import AccountsError
from ..forms import ApiKeyCreateForm, ApiKeyEditForm, ApiKeyExpiryForm, ApiKeyRotateForm
from ..permissions import KEY_ROLES, can_edit_enforced_tags, portal_view
from ..services import api_key_issue, api_key_revoke, api_key_rotate, api_key_update


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
    lineage = selectors.api_keys_visible_to(user=request.user, identity=identity).filter(
        lineage_id=key.lineage_id
    )
    return {"key": key, "edit_form": edit_form, "expiry_form": expiry_form, "lineage": lineage}


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
            return _secret_page(request, key=new_key, secret=secret, rotated_from=key)
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
