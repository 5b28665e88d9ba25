"""Admin pages for users and their roles per team."""

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render

from .. import selectors
from ..exceptions import AccountsError
from ..forms import UserRoleForm
from ..permissions import ADMIN_ONLY, portal_view
from ..services import membership_set


@portal_view(ADMIN_ONLY)
def user_list(request: HttpRequest, identity) -> HttpResponse:
    rows = selectors.users_with_memberships(identity=identity)
    return render(request, "accounts/users.html", {"users": rows})


@portal_view(ADMIN_ONLY)
def user_detail(request: HttpRequest, identity, pk: int) -> HttpResponse:
    person = get_object_or_404(selectors.users_with_memberships(identity=identity), pk=pk)
    teams = selectors.teams_administered_by(identity=identity)
    form = UserRoleForm(request.POST or None, team_choices=[(str(t.pk), t.name) for t in teams])
    if request.method == "POST" and form.is_valid():
        team = get_object_or_404(teams, pk=form.cleaned_data["team"])
        try:
            membership_set(
                user=person, team=team, role=form.cleaned_data["role"], actor=request.user
            )
        except AccountsError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(
                request, f"{person.get_username()} is {form.cleaned_data['role']} in {team}."
            )
            return redirect("user_detail", pk=person.pk)
    status = 400 if form.errors else 200
    return render(
        request, "accounts/user_detail.html", {"person": person, "form": form}, status=status
    )
