"""Portal pages: statements, chargebacks and insights (finance, admin); tiers and subscriptions
(admin)."""

import datetime as dt

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone

from apps.accounts.selectors import portal_identity
from apps.usage.grouping import month_start
from apps.usage.regions import is_multi_region

from .exceptions import SubscriptionError
from .exports import statements_month_csv
from .forms import SubscriptionForm, TierForm
from .models import Tier
from .selectors.insights import billing_insights
from .selectors.plans import (
    statement_months,
    statements_for_month,
    subscription_history,
    subscriptions_current,
    tier_change_preview,
    tier_list,
)
from .services import subscription_change, tier_save


def _forbidden(request: HttpRequest) -> HttpResponse:
    return render(request, "accounts/forbidden.html", status=403)


def _month(request: HttpRequest) -> dt.date:
    try:
        return dt.date.fromisoformat(f"{request.GET.get('month', '')}-01")
    except ValueError:
        return month_start(timezone.now().astimezone(dt.UTC).date())


@login_required
def statements(request: HttpRequest) -> HttpResponse:
    identity = portal_identity(user=request.user)
    if not identity.is_org_wide:
        return _forbidden(request)
    month = _month(request)
    return render(
        request,
        "billing/statements.html",
        {
            "month": month,
            "months": statement_months(),
            "statements": statements_for_month(month=month),
            "by_region": is_multi_region(),
            "is_admin": identity.is_admin,
        },
    )


@login_required
def statements_csv(request: HttpRequest) -> HttpResponse:
    if not portal_identity(user=request.user).is_org_wide:
        return _forbidden(request)
    month = _month(request)
    return statements_month_csv(statements_for_month(month=month), month=month)


@login_required
def insights(request: HttpRequest) -> HttpResponse:
    identity = portal_identity(user=request.user)
    if not identity.is_org_wide:
        return _forbidden(request)
    return render(
        request,
        "billing/insights.html",
        {"insights": billing_insights(), "is_admin": identity.is_admin},
    )


@login_required
def tiers(request: HttpRequest) -> HttpResponse:
    if not portal_identity(user=request.user).is_admin:
        return _forbidden(request)
    form = TierForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        tier_save(actor=request.user, **form.cleaned_data)
        messages.success(request, f"Tier {form.cleaned_data['name']} created.")
        return redirect("billing:tiers")
    return render(request, "billing/tiers.html", {"tiers": tier_list(), "form": form})


@login_required
def tier_edit(request: HttpRequest, tier_id: int) -> HttpResponse:
    if not portal_identity(user=request.user).is_admin:
        return _forbidden(request)
    tier = get_object_or_404(Tier, pk=tier_id)
    form = TierForm(request.POST or None, instance=tier)
    if request.method == "POST" and form.is_valid():
        # Validation copied the form's values onto `tier`: reload it so the audit's "before"
        # snapshot is what was stored.
        tier_save(tier=Tier.objects.get(pk=tier_id), actor=request.user, **form.cleaned_data)
        messages.success(request, f"Tier {tier.name} saved.")
        return redirect("billing:tiers")
    return render(request, "billing/tier_edit.html", {"tier": tier, "form": form})


@login_required
def subscriptions(request: HttpRequest) -> HttpResponse:
    """Assign or change a tier: a first POST previews, a second (confirm) applies."""
    if not portal_identity(user=request.user).is_admin:
        return _forbidden(request)
    form = SubscriptionForm(request.POST or None)
    preview = None
    if request.method == "POST" and form.is_valid():
        subject, tier = form.cleaned_data["subject"], form.cleaned_data["tier"]
        if request.POST.get("action") == "confirm":
            try:
                subscription_change(subject=subject, tier=tier, actor=request.user)
            except SubscriptionError as error:
                form.add_error(None, str(error))
            else:
                messages.success(request, f"{subject.label}: now on {tier or 'no tier'}.")
                return redirect("billing:subscriptions")
        elif tier is not None:
            preview = tier_change_preview(subject=subject, tier=tier)
    return render(
        request,
        "billing/subscriptions.html",
        {"form": form, "preview": preview, "subscriptions": subscriptions_current()},
    )


@login_required
def subscription_history_page(request: HttpRequest) -> HttpResponse:
    if not portal_identity(user=request.user).is_admin:
        return _forbidden(request)
    key = request.GET.get("subject", "")
    return render(
        request,
        "billing/history.html",
        {"subject_key": key, "rows": subscription_history(subject_key=key)},
    )
