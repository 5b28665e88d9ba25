"""Portal forms of the quotas app: the YAML editor."""

from typing import Any

from django import forms

from .rules import ConfigIssue, QuotaConfig, QuotaConfigError, parse_config
from .simulate import DEFAULT_DAYS, MAX_DAYS


class QuotaConfigForm(forms.Form):
    """The editor: YAML text, a note for the version history, and the dry-run period."""

    yaml_text = forms.CharField(
        label="Rules (YAML)",
        strip=False,
        widget=forms.Textarea(attrs={"rows": 24, "spellcheck": "false", "class": "yaml"}),
    )
    note = forms.CharField(label="Note", max_length=200, required=False)
    days = forms.IntegerField(
        label="Dry run over the last … days",
        min_value=1,
        max_value=MAX_DAYS,
        initial=DEFAULT_DAYS,
        required=False,
    )

    def clean_days(self) -> int:
        return self.cleaned_data["days"] or DEFAULT_DAYS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.issues: list[ConfigIssue] = []
        self.config: QuotaConfig | None = None

    def clean_yaml_text(self) -> str:
        text: str = self.cleaned_data["yaml_text"]
        try:
            self.config = parse_config(text)
        except QuotaConfigError as error:
            self.issues = error.issues
            raise forms.ValidationError(
                f"The config has {len(error.issues)} problem(s); nothing was changed."
            ) from None
        return text

    def annotated_lines(self) -> list[tuple[int, str, list[ConfigIssue]]]:
        """(line number, text, issues on that line) of the submitted YAML, for the listing."""
        by_line: dict[int, list[ConfigIssue]] = {}
        for issue in self.issues:
            by_line.setdefault(issue.line or 1, []).append(issue)
        text = self.data.get("yaml_text", "") if self.is_bound else ""
        lines = text.splitlines() or [""]
        return [(n, line, by_line.get(n, [])) for n, line in enumerate(lines, 1)]
