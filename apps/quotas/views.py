"""Portal pages for quotas: live usage per rule, and the admins' YAML editor."""

from typing import TYPE_CHECKING, cast

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from apps.accounts.permissions import EVERY_ROLE
from apps.accounts.selectors import portal_identity

from .exceptions import QuotaConfigVersionNotFound
from .forms import QuotaConfigForm
from .rules import QuotaConfig, QuotaConfigError
from .selectors import active_quota_config_version, quota_config_versions, quota_overview
from .services import quota_config_apply, quota_config_rollback
from .simulate import simulate_recent

if TYPE_CHECKING:
    from django.contrib.auth.models import User


def _signed_in(request: HttpRequest) -> "User":
    # Every view here is login_required, so the user is a signed-in account.
    return cast("User", request.user)


# Every role: what each sees is its usage scope (a developer: the rules covering them).
VIEWER_ROLES = EVERY_ROLE
HISTORY_LENGTH = 50


def _forbidden(request: HttpRequest) -> HttpResponse:
    return render(request, "accounts/forbidden.html", status=403)


@login_required
def rules(request: HttpRequest) -> HttpResponse:
    identity = portal_identity(user=request.user)
    if identity.role not in VIEWER_ROLES:
        return _forbidden(request)
    overview = quota_overview(identity=identity)
    return render(
        request, "quotas/rules.html", {"overview": overview, "can_edit": identity.is_admin}
    )


@login_required
def edit(request: HttpRequest) -> HttpResponse:
    identity = portal_identity(user=request.user)
    if not identity.is_admin:
        return _forbidden(request)
    active = active_quota_config_version()
    report = None
    if request.method == "POST":
        form = QuotaConfigForm(request.POST)
        if form.is_valid():
            if request.POST.get("action") == "dry_run":
                # A valid form has parsed its YAML into `config`.
                config = cast(QuotaConfig, form.config)
                report = simulate_recent(config, days=form.cleaned_data["days"])
            else:
                try:
                    row = quota_config_apply(
                        yaml_text=form.cleaned_data["yaml_text"],
                        author=_signed_in(request),
                        note=form.cleaned_data["note"] or "portal edit",
                    )
                except QuotaConfigError as error:  # the text parsed in the form already
                    form.issues = error.issues
                    form.add_error("yaml_text", str(error))
                else:
                    messages.success(request, f"Saved as version {row.version}; it is active.")
                    return redirect("quotas:edit")
    else:
        source = active
        wanted = request.GET.get("from")
        if wanted and wanted.isdigit():
            source = quota_config_versions().filter(version=int(wanted)).first() or active
        form = QuotaConfigForm(initial={"yaml_text": source.yaml_text if source else ""})
    context = {
        "form": form,
        "active": active,
        "versions": quota_config_versions()[:HISTORY_LENGTH],
        "report": report,
    }
    return render(request, "quotas/edit.html", context)


@login_required
@require_POST
def rollback(request: HttpRequest, version: int) -> HttpResponse:
    if not portal_identity(user=request.user).is_admin:
        return _forbidden(request)
    try:
        row = quota_config_rollback(version=version, author=_signed_in(request))
    except QuotaConfigVersionNotFound:
        messages.error(request, f"There is no version {version}.")
    except QuotaConfigError as error:
        messages.error(request, f"Version {version} no longer validates: {error}")
    else:
        messages.success(request, f"Rolled back to version {version}: now version {row.version}.")
    return redirect("quotas:edit")
