"""Portal pages of the usage ledger itself (admins): rows the database refused."""

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from apps.accounts.permissions import ADMIN_ONLY, portal_view
from apps.accounts.selectors import PortalIdentity

from .selectors import usage_dead_letters_open
from .services import usage_dead_letters_replay

PAGE_SIZE = 50


@portal_view(ADMIN_ONLY)
def dead_letters(request: HttpRequest, identity: PortalIdentity) -> HttpResponse:
    page = Paginator(usage_dead_letters_open(), PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "usage/dead_letters.html", {"page": page})


@require_POST
@portal_view(ADMIN_ONLY)
def dead_letters_replay(request: HttpRequest, identity: PortalIdentity) -> HttpResponse:
    raw_ids = request.POST.getlist("id")
    ids = [int(value) for value in raw_ids if value.isdigit()] if raw_ids else None
    result = usage_dead_letters_replay(actor=request.user, ids=ids)
    messages.info(
        request,
        f"Replayed: {result.written:,} written, {result.already_there:,} already in the ledger, "
        f"{result.still_failing:,} still refused.",
    )
    return redirect("usage:dead_letters")
