"""Portal pages of the usage ledger itself (admins): rows the database refused."""

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from apps.accounts.permissions import ADMIN_ONLY, portal_view
from apps.accounts.selectors import PortalIdentity

from .regions import default_region, region_names
from .selectors import usage_dead_letter_counts, usage_dead_letters_open
from .services import usage_dead_letters_replay

PAGE_SIZE = 50


def _region(value: str | None) -> str:
    # Each region's dead letters are kept, and shown, apart; an unknown name is the default.
    return value if value in region_names() else default_region()


@portal_view(ADMIN_ONLY)
def dead_letters(request: HttpRequest, identity: PortalIdentity) -> HttpResponse:
    region = _region(request.GET.get("region"))
    letters = usage_dead_letters_open(region)
    page = Paginator(letters, PAGE_SIZE).get_page(request.GET.get("page"))
    context = {"page": page, "region": region, "counts": usage_dead_letter_counts()}
    return render(request, "usage/dead_letters.html", context)


@require_POST
@portal_view(ADMIN_ONLY)
def dead_letters_replay(request: HttpRequest, identity: PortalIdentity) -> HttpResponse:
    raw_ids = request.POST.getlist("id")
    ids = [int(value) for value in raw_ids if value.isdigit()] if raw_ids else None
    region = _region(request.POST.get("region"))
    result = usage_dead_letters_replay(actor=request.user, ids=ids, region=region)
    messages.info(
        request,
        f"Replayed: {result.written:,} written, {result.already_there:,} already in the ledger, "
        f"{result.still_failing:,} still refused.",
    )
    return redirect(f"{reverse('usage:dead_letters')}?region={region}")
