"""The dashboards' GET form: filters and page options, all held in the URL so views share."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from django import forms

from apps.usage.tags import control_character, tag_key_problem

from .datasets import DEFAULT_TOP, PERCENTILE_CHOICES, RANK_METRICS, PageOptions
from .filters import MAX_DAYS, DashboardFilters, default_filters, is_valid_dimension

# The filter parameters shared by every page (the tabs carry them from page to page).
FILTER_PARAMS = ("start", "end", "team", "model", "tag", "region")


def _no_control_character(value: str) -> None:
    # No tag value holds one (`apps.usage.tags`), so such a filter could only match nothing.
    control = control_character(value)
    if control:
        raise forms.ValidationError(f"A tag value cannot contain the control character {control}.")


class FilterForm(forms.Form):
    start = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    team = forms.TypedChoiceField(required=False, coerce=int, empty_value=None)
    region = forms.ChoiceField(required=False)
    model = forms.CharField(required=False, max_length=200)
    tag = forms.CharField(
        required=False,
        max_length=300,
        help_text="key=value",
        widget=forms.TextInput(attrs={"placeholder": "feature=search"}),
    )
    group = forms.CharField(required=False, max_length=80)
    top = forms.IntegerField(required=False, min_value=1, max_value=20)
    pct = forms.ChoiceField(required=False, choices=[(c, c.upper()) for c in PERCENTILE_CHOICES])
    key = forms.CharField(required=False, max_length=64)
    value = forms.CharField(required=False, max_length=300)
    rank = forms.ChoiceField(required=False, choices=[(m, m) for m in RANK_METRICS])

    def __init__(
        self, data, *, teams: list[tuple[int, str]], regions: Sequence[str] = (), **kwargs
    ):
        super().__init__(data, **kwargs)
        self.fields["team"].choices = [("", "All teams"), *teams]
        # Shown with several data regions only (the caller's own).
        self.fields["region"].choices = [("", "All regions"), *((r, r) for r in regions)]

    def clean_tag(self) -> tuple[str, str] | None:
        text = self.cleaned_data.get("tag", "").strip()
        if not text:
            return None
        # The first "=" splits: a key holding "=" is filtered through the tag explorer.
        key, sep, value = text.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or tag_key_problem(key):
            raise forms.ValidationError("Write a tag filter as key=value.")
        _no_control_character(value)
        return key, value

    def clean_group(self) -> str:
        group = self.cleaned_data.get("group", "")
        if group and not is_valid_dimension(group):
            raise forms.ValidationError("Unknown breakdown.")
        return group

    def clean_key(self) -> str:
        key = self.cleaned_data.get("key", "").strip()
        if key and tag_key_problem(key):
            raise forms.ValidationError("Not a valid tag key.")
        return key

    def clean_value(self) -> str:
        value = self.cleaned_data.get("value", "")
        _no_control_character(value)
        return value

    def clean(self):
        data = super().clean()
        start, end = data.get("start"), data.get("end")
        if start and end and start > end:
            self.add_error("end", "The end is before the start.")
        elif start and end and (end - start).days >= MAX_DAYS:
            self.add_error("end", f"Choose at most {MAX_DAYS} days.")
        return data

    def filters(self, *, today: dt.date) -> DashboardFilters:
        """The valid filters; anything invalid falls back to its default (errors are shown)."""
        data = self.cleaned_data if self.is_bound else {}
        default = default_filters(today=today)
        start = data.get("start") or default.start
        end = data.get("end") or max(default.end, start)
        if start > end or (end - start).days >= MAX_DAYS:
            start, end = default.start, default.end
        tag = data.get("tag")
        return DashboardFilters(
            start=start,
            end=end,
            team_id=data.get("team"),
            model=data.get("model") or "",
            tags=(tag,) if tag else (),
            region=data.get("region") or "",
        )

    def options(self, *, default_group: str = "team") -> PageOptions:
        data = self.cleaned_data if self.is_bound else {}
        return PageOptions(
            group=data.get("group") or default_group,
            top=data.get("top") or DEFAULT_TOP,
            pct=data.get("pct") or "p90",
            tag_key=data.get("key") or "",
            tag_value=data.get("value") or "",
            rank=data.get("rank") or "cost_usd",
        )
