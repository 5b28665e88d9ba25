from django.conf import settings
from django.db import models
from django.db.models import Q

from .constants import SubjectType


class ModelPrice(models.Model):
    """A list price per token for a model name, effective from a date: input, output, and
    the cache-read and cache-write rates of providers that price prompt caching.

    Prices change by adding a row with a later `effective_from`, so rows already costed keep
    the price that applied when they were made.
    """

    model_name = models.CharField(max_length=200)
    provider = models.CharField(max_length=50, blank=True)
    mode = models.CharField(max_length=20, blank=True)
    input_cost_per_token = models.DecimalField(max_digits=20, decimal_places=12)
    output_cost_per_token = models.DecimalField(max_digits=20, decimal_places=12, default=0)
    # Prompt caching: reading cached prompt tokens, and writing them to the cache. Unset,
    # such tokens cost as plain input (`apps.proxy.pricing`).
    cached_input_cost_per_token = models.DecimalField(
        max_digits=20, decimal_places=12, null=True, blank=True
    )
    cache_write_cost_per_token = models.DecimalField(
        max_digits=20, decimal_places=12, null=True, blank=True
    )
    effective_from = models.DateField()
    # Part of the gateway catalog's change fingerprint: an edited price reaches the workers.
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model_name", "-effective_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["model_name", "effective_from"], name="modelprice_unique_from"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model_name} from {self.effective_from}"


class Tier(models.Model):
    """A pricing plan: a monthly token allowance for a monthly price.

    Beyond the allowance a tier either charges `overage_price_per_1k_tokens` or, with
    `hard_cap`, refuses requests through a generated quota rule. `included_models`, when not
    empty, limits which models' tokens count against (and are capped by) the allowance.
    """

    name = models.CharField(max_length=100, unique=True)
    monthly_token_allowance = models.BigIntegerField()
    monthly_price = models.DecimalField(max_digits=12, decimal_places=2)
    overage_price_per_1k_tokens = models.DecimalField(
        max_digits=12, decimal_places=6, null=True, blank=True
    )
    hard_cap = models.BooleanField(default=False)
    included_models = models.JSONField(default=list, blank=True)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["monthly_token_allowance", "name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(hard_cap=True) | Q(overage_price_per_1k_tokens__isnull=False),
                name="tier_overage_price_or_hard_cap",
            ),
            models.CheckConstraint(
                condition=Q(monthly_token_allowance__gt=0), name="tier_allowance_positive"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Subscription(models.Model):
    """A tier assigned to one billing subject from `starts_at` until `ends_at` (open: now).

    A change of tier closes the open row and opens a new one at the same instant, so the rows
    of a subject are its history. `subject_key` ("team:<id>", "virtual_account:<id>",
    "customer:<tag value>") identifies the subject across renames; at most one open row each.
    """

    tier = models.ForeignKey(Tier, on_delete=models.PROTECT, related_name="subscriptions")
    subject_type = models.CharField(max_length=20, choices=SubjectType.choices)
    subject_key = models.CharField(max_length=300)
    team = models.ForeignKey(
        "accounts.Team",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="subscriptions",
    )
    virtual_account = models.ForeignKey(
        "accounts.VirtualAccount",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="subscriptions",
    )
    customer_id = models.CharField(max_length=200, blank=True)
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["subject_key", "-starts_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["subject_key"],
                condition=Q(ends_at__isnull=True),
                name="subscription_one_open_per_subject",
            ),
            models.CheckConstraint(
                condition=Q(ends_at__isnull=True) | Q(ends_at__gt=models.F("starts_at")),
                name="subscription_ends_after_start",
            ),
        ]
        indexes = [models.Index(fields=["subject_key", "starts_at"], name="sub_subject_start")]

    def __str__(self) -> str:
        return f"{self.subject_key} on {self.tier_id} from {self.starts_at:%Y-%m-%d %H:%M}"

    @property
    def subject_label(self) -> str:
        if self.subject_type == SubjectType.TEAM and self.team_id:
            return f"team {self.team.slug}"
        if self.subject_type == SubjectType.VIRTUAL_ACCOUNT and self.virtual_account_id:
            return f"virtual account {self.virtual_account.name}"
        return f"customer {self.customer_id}"


class Statement(models.Model):
    """What a billing subject owes for one month, computed from the monthly rollups.

    Recomputed by every monthly rollup run (upsert on subject and month). `lines` lists the
    prorated base charge of each tier the subject held during the month.
    """

    subject_type = models.CharField(max_length=20, choices=SubjectType.choices)
    subject_key = models.CharField(max_length=300)
    subject_label = models.CharField(max_length=300)
    month = models.DateField()
    tier = models.ForeignKey(Tier, on_delete=models.PROTECT, related_name="statements")
    allowance_tokens = models.BigIntegerField()
    used_tokens = models.BigIntegerField()
    overage_tokens = models.BigIntegerField()
    base_amount = models.DecimalField(max_digits=14, decimal_places=2)
    overage_amount = models.DecimalField(max_digits=14, decimal_places=2)
    amount = models.DecimalField(max_digits=14, decimal_places=2)
    # Upstream cost of the same usage, for margin reports; not part of the amount.
    cost_usd = models.DecimalField(max_digits=24, decimal_places=10, default=0)
    lines = models.JSONField(default=list)
    # The data regions whose ledgers hold the usage billed (empty with one region).
    regions = models.JSONField(default=list, blank=True)
    computed_at = models.DateTimeField()

    class Meta:
        ordering = ["-month", "subject_key"]
        constraints = [
            models.UniqueConstraint(
                fields=["subject_key", "month"], name="statement_unique_subject_month"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.subject_label} {self.month:%Y-%m}: {self.amount} USD"
