"""The tag glossary: tag keys in use, what they mean and who owns them."""

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from .. import selectors
from ..exceptions import AccountsError
from ..forms import TagDefinitionForm
from ..permissions import EVERY_ROLE, TEAM_ROLES, can_edit_tag_definition, has_role, portal_view
from ..services import tag_definition_upsert


def _form(identity, data=None, initial=None):
    teams = selectors.teams_administered_by(identity=identity)
    return TagDefinitionForm(
        data,
        initial=initial,
        team_choices=[(str(t.pk), t.name) for t in teams],
        # A team admin's entries belong to one of their teams, so they stay editable.
        owner_required=not identity.is_admin,
    )


@portal_view(EVERY_ROLE)
def tag_glossary(request: HttpRequest, identity) -> HttpResponse:
    may_edit = has_role(identity, TEAM_ROLES)
    form = None
    if may_edit and request.method == "POST":
        form = _form(identity, data=request.POST)
        if form.is_valid():
            data = form.cleaned_data
            definition = selectors.tag_definition_get(key=data["key"])
            owner_team = None
            if data["owner_team"]:
                owner_team = selectors.teams_administered_by(identity=identity).get(
                    pk=data["owner_team"]
                )
            if not can_edit_tag_definition(identity, definition):
                form.add_error("key", "This tag is owned by another team; ask an admin.")
            else:
                try:
                    tag_definition_upsert(
                        key=data["key"],
                        description=data["description"],
                        owner_team=owner_team,
                        owner_user=None if owner_team else request.user,
                        actor=request.user,
                    )
                except AccountsError as exc:
                    form.add_error(None, str(exc))
                else:
                    messages.success(request, f"Tag {data['key']} saved.")
                    return redirect("tags")
    elif may_edit:
        key = request.GET.get("key", "")
        definition = selectors.tag_definition_get(key=key) if key else None
        initial = {"key": key}
        if definition is not None and can_edit_tag_definition(identity, definition):
            initial.update(
                description=definition.description,
                owner_team=definition.owner_team_id or "",
            )
        form = _form(identity, initial=initial)
    entries = selectors.tag_glossary(identity=identity)
    status = 400 if form is not None and form.errors else 200
    return render(
        request,
        "accounts/tags.html",
        {"entries": entries, "form": form, "may_edit": may_edit},
        status=status,
    )
