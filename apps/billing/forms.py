from django import forms

from apps.accounts.models import Team, VirtualAccount

from .constants import SubjectType
from .exceptions import SubscriptionError
from .models import Tier
from .services.subscriptions import TIER_FIELDS
from .subjects import BillingSubject


class TierForm(forms.ModelForm):
    included_models = forms.CharField(
        required=False, help_text="Comma-separated model names; empty means every model."
    )

    class Meta:
        model = Tier
        fields = list(TIER_FIELDS)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.initial["included_models"] = ", ".join(self.instance.included_models or [])

    def clean_included_models(self) -> list[str]:
        value = self.cleaned_data.get("included_models") or ""
        return [part.strip() for part in value.split(",") if part.strip()]

    def clean(self):
        data = super().clean()
        if not data.get("hard_cap") and data.get("overage_price_per_1k_tokens") is None:
            self.add_error(
                "overage_price_per_1k_tokens",
                "Give an overage price, or make the tier hard-capped.",
            )
        return data


class SubscriptionForm(forms.Form):
    subject_type = forms.ChoiceField(choices=SubjectType.choices)
    team = forms.ModelChoiceField(queryset=Team.objects.all(), required=False)
    virtual_account = forms.ModelChoiceField(queryset=VirtualAccount.objects.all(), required=False)
    customer_id = forms.CharField(required=False, max_length=200, label="Customer tag value")
    tier = forms.ModelChoiceField(
        queryset=Tier.objects.filter(is_active=True),
        required=False,
        empty_label="(no tier: end the subscription)",
    )

    def clean(self):
        data = super().clean()
        kind = data.get("subject_type")
        try:
            data["subject"] = BillingSubject(
                type=SubjectType(kind),
                team=data.get("team") if kind == SubjectType.TEAM else None,
                virtual_account=(
                    data.get("virtual_account") if kind == SubjectType.VIRTUAL_ACCOUNT else None
                ),
                customer_id=(data.get("customer_id") or "") if kind == SubjectType.CUSTOMER else "",
            )
        except (ValueError, SubscriptionError) as error:  # a missing choice or subject
            raise forms.ValidationError(str(error)) from error
        return data
