"""Portal forms. They validate input and nothing more; choices come in from selectors."""

import json

from django import forms

from apps.usage.tags import tag_key_problem, tags_problem

from .constants import Role


def _tag_error(problem: str) -> forms.ValidationError:
    return forms.ValidationError(f"{problem[0].upper()}{problem[1:]}.")


def validate_tag_key(key: str) -> None:
    """A tag key by the one rule (`apps.usage.tags`): any text but control characters."""
    problem = tag_key_problem(key)
    if problem:
        raise _tag_error(problem)


class JSONTagsField(forms.CharField):
    """A JSON object of strings to strings, typed into a textarea."""

    widget = forms.Textarea(attrs={"rows": 3, "placeholder": '{"cost_center": "cc-200"}'})

    def __init__(self, **kwargs):
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)

    def prepare_value(self, value):
        if isinstance(value, dict):
            return json.dumps(value, ensure_ascii=False) if value else ""
        return value

    def to_python(self, value):
        value = (value or "").strip()
        if not value:
            return {}
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc.msg}.") from exc
        if not isinstance(parsed, dict):
            raise forms.ValidationError('Enter a JSON object, e.g. {"feature": "search"}.')
        problem = tags_problem(parsed)
        if problem:
            raise _tag_error(problem)
        return parsed


class TagKeyListField(forms.CharField):
    """Comma-separated tag keys."""

    def __init__(self, **kwargs):
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)

    def prepare_value(self, value):
        if isinstance(value, list | tuple):
            return ", ".join(value)
        return value

    def to_python(self, value):
        keys = [part.strip() for part in (value or "").split(",") if part.strip()]
        for key in keys:
            validate_tag_key(key)
        return list(dict.fromkeys(keys))


class ChoicesFormMixin:
    """Forms whose select choices depend on the caller get them as keyword arguments."""

    def set_choices(self, name: str, choices) -> None:
        self.fields[name].choices = list(choices)


class ApiKeyCreateForm(ChoicesFormMixin, forms.Form):
    name = forms.CharField(max_length=200)
    owner = forms.ChoiceField(help_text="Yourself, or a virtual account of a team you administer.")
    team = forms.ChoiceField(
        required=False, help_text="For a key you own: the team its usage is billed to."
    )
    allowed_models = forms.MultipleChoiceField(
        required=False,
        widget=forms.SelectMultiple(attrs={"size": 6}),
        help_text="None selected means every model.",
    )
    default_tags = JSONTagsField()
    expires_in_days = forms.IntegerField(
        required=False, min_value=1, max_value=3650, help_text="Empty: never expires."
    )

    def __init__(self, *args, owner_choices, team_choices, model_choices, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_choices("owner", owner_choices)
        self.set_choices("team", [("", "—"), *team_choices])
        self.set_choices("allowed_models", [(m, m) for m in model_choices])

    def clean(self):
        data = super().clean()
        if data.get("owner") == "self" and not data.get("team"):
            if len(self.fields["team"].choices) == 2:  # exactly one team: take it
                data["team"] = self.fields["team"].choices[1][0]
            else:
                self.add_error("team", "Choose the team this key's usage is billed to.")
        return data


class ApiKeyEditForm(ChoicesFormMixin, forms.Form):
    name = forms.CharField(max_length=200)
    allowed_models = forms.MultipleChoiceField(
        required=False,
        widget=forms.SelectMultiple(attrs={"size": 6}),
        help_text="None selected means every model.",
    )
    default_tags = JSONTagsField()
    enforced_tag_keys = TagKeyListField(
        help_text="Comma-separated default tag keys a request may not override."
    )

    def __init__(self, *args, model_choices, may_enforce_tags: bool, **kwargs):
        super().__init__(*args, **kwargs)
        # Keep models the key already allows even if they left the catalog.
        current = list(self.initial.get("allowed_models") or [])
        names = list(dict.fromkeys([*model_choices, *current]))
        self.set_choices("allowed_models", [(m, m) for m in names])
        if not may_enforce_tags:
            del self.fields["enforced_tag_keys"]

    def clean(self):
        data = super().clean()
        enforced = data.get("enforced_tag_keys") or []
        tags = data.get("default_tags") or {}
        missing = [k for k in enforced if k not in tags]
        if missing:
            self.add_error(
                "enforced_tag_keys", f"Not among the default tags: {', '.join(missing)}."
            )
        return data


class ApiKeyExpiryForm(forms.Form):
    expires_at = forms.DateTimeField(
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="UTC. Empty: never expires.",
    )


class ApiKeyRotateForm(forms.Form):
    grace_hours = forms.FloatField(
        min_value=0,
        max_value=24 * 30,
        initial=24,
        help_text="How long the old key keeps working (0 stops it at once; at most 720).",
    )


class RotationPolicyForm(forms.Form):
    every_days = forms.IntegerField(
        min_value=1, max_value=3650, initial=90, help_text="Rotate keys this many days old."
    )
    grace_hours = forms.FloatField(
        min_value=0,
        max_value=24 * 30,
        initial=24,
        help_text="How long the old key keeps working after each rotation.",
    )

    def clean(self):
        data = super().clean()
        every, grace = data.get("every_days"), data.get("grace_hours")
        if every is not None and grace is not None and grace > every * 24:
            self.add_error("grace_hours", "Must be shorter than the rotation interval.")
        return data


class TeamCreateForm(forms.Form):
    name = forms.CharField(max_length=200)
    slug = forms.SlugField(max_length=100, required=False, help_text="Empty: from the name.")
    default_tags = JSONTagsField()


class TeamEditForm(forms.Form):
    name = forms.CharField(max_length=200)
    default_tags = JSONTagsField()
    required_tag_keys = TagKeyListField(
        help_text="Comma-separated tag keys every request of this team must carry."
    )
    allow_request_logging = forms.BooleanField(
        required=False, help_text="Let the log_request tag store request and response bodies."
    )


class TeamRegionForm(ChoicesFormMixin, forms.Form):
    """Admins: where the team's usage, tags and logged bodies are kept."""

    data_region = forms.ChoiceField(
        label="Data region",
        help_text="New usage rows go to this region's database at once; history stays "
        "until it is moved (manage.py usage move-region).",
    )

    def __init__(self, *args, regions, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_choices("data_region", [(name, name) for name in regions])


class MembershipAddForm(ChoicesFormMixin, forms.Form):
    username = forms.CharField(max_length=150)
    role = forms.ChoiceField()

    def __init__(self, *args, role_choices, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_choices("role", [(r.value, r.label) for r in role_choices])


class MembershipRoleForm(ChoicesFormMixin, forms.Form):
    role = forms.ChoiceField()

    def __init__(self, *args, role_choices, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_choices("role", [(r.value, r.label) for r in role_choices])


class UserRoleForm(ChoicesFormMixin, forms.Form):
    """Admin: give a user a role in a team."""

    team = forms.ChoiceField()
    role = forms.ChoiceField(
        choices=[
            (r.value, r.label) for r in (Role.DEVELOPER, Role.TEAM_ADMIN, Role.FINANCE, Role.ADMIN)
        ]
    )

    def __init__(self, *args, team_choices, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_choices("team", team_choices)


class VirtualAccountCreateForm(forms.Form):
    name = forms.SlugField(max_length=100, help_text="Lowercase, digits and dashes; unique.")
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    default_tags = JSONTagsField()


class VirtualAccountEditForm(forms.Form):
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    default_tags = JSONTagsField()


class TagDefinitionForm(ChoicesFormMixin, forms.Form):
    key = forms.CharField(max_length=64, validators=[validate_tag_key])
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}))
    owner_team = forms.ChoiceField(required=False)

    def __init__(self, *args, team_choices, owner_required: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_choices("owner_team", [("", "—"), *team_choices])
        self.fields["owner_team"].required = owner_required


class AuditFilterForm(ChoicesFormMixin, forms.Form):
    actor = forms.CharField(required=False, max_length=150)
    action = forms.ChoiceField(required=False)
    object_type = forms.ChoiceField(required=False)
    date_from = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))

    def __init__(self, *args, actions, object_types, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_choices("action", [("", "any"), *((a, a) for a in actions)])
        self.set_choices("object_type", [("", "any"), *((t, t) for t in object_types)])

    def clean(self):
        data = super().clean()
        if data.get("date_from") and data.get("date_to") and data["date_from"] > data["date_to"]:
            self.add_error("date_to", "Must not be before the start date.")
        return data
