"""Dashboard rollups: one UTC day of usage summed per the dimensions the dashboards chart.

Billing's daily rollup groups by subject, model and the cross product of tag values, which
is what chargebacks need; the dashboards also break usage down by provider and error type,
by one tag key at a time, and need latency percentiles, which cannot be summed. These tables
hold exactly that, small enough to read 90 days of a busy gateway quickly. All are replaced
wholesale per day by `dashboard_rollup_days`, in one transaction, so a re-run picks up late
rows and the tables always cover the same days.
"""

from django.db import models


class UsageSums(models.Model):
    """Requests, errors, tokens and cost summed over a day's rows (abstract)."""

    requests = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=24, decimal_places=10, default=0)
    computed_at = models.DateTimeField()

    class Meta:
        abstract = True


class LatencyHistograms(models.Model):
    """A day's latency histogram of successful requests and TTFT histogram of successful
    streams, per team or summed over teams (`all_teams`, `team_id` then null) (abstract).

    Histograms are `{bucket: count}` (`histograms.py`); JSON object keys are text.
    """

    day = models.DateField()
    all_teams = models.BooleanField(default=False)
    team_id = models.BigIntegerField(null=True)
    requests = models.BigIntegerField(default=0)
    streams = models.BigIntegerField(default=0)
    latency = models.JSONField(default=dict)
    ttft = models.JSONField(default=dict)
    computed_at = models.DateTimeField()

    class Meta:
        abstract = True


class UsageCubeDaily(UsageSums):
    """Requests, errors, tokens and cost of one day per team, user, virtual account, model,
    provider, error type and stream flag. Ids are plain, like `UsageRecord`'s."""

    day = models.DateField()
    team_id = models.BigIntegerField(null=True)
    user_id = models.BigIntegerField(null=True)
    virtual_account_id = models.BigIntegerField(null=True)
    model = models.CharField(max_length=200)
    provider = models.CharField(max_length=20, blank=True)
    error_type = models.CharField(max_length=64, blank=True)
    is_stream = models.BooleanField(default=False)

    class Meta:
        ordering = ["day", "team_id", "model"]
        indexes = [models.Index(fields=["day", "team_id"], name="cube_day_team")]

    def __str__(self) -> str:
        return f"{self.day} team {self.team_id} {self.model}/{self.provider}"


class LatencyHistogramDaily(LatencyHistograms):
    """Latency histograms (see `LatencyHistograms`) per team, model and provider.

    Not per user: that would multiply rows by users for little gain; reads scoped to a user
    bucket that user's raw rows instead. The `all_teams` rows let org-wide reads merge a
    fraction of the rows.
    """

    model = models.CharField(max_length=200)
    provider = models.CharField(max_length=20, blank=True)

    class Meta:
        ordering = ["day", "team_id", "model"]
        indexes = [
            models.Index(fields=["all_teams", "day", "team_id"], name="latencyhist_day_team")
        ]

    def __str__(self) -> str:
        return f"{self.day} team {self.team_id} {self.model}/{self.provider}"


class TagUsageDaily(UsageSums):
    """Usage of one day per team, user, virtual account and the value of one rollup tag key
    (`BILLING_ROLLUP_TAG_KEYS` and the customer key; "" when the tag is absent).

    One row set per key rather than billing's cross product of all keys' values, and no
    model: small enough to rank a key's values or follow one value over 90 days quickly.
    """

    day = models.DateField()
    team_id = models.BigIntegerField(null=True)
    user_id = models.BigIntegerField(null=True)
    virtual_account_id = models.BigIntegerField(null=True)
    tag_key = models.CharField(max_length=64)
    tag_value = models.CharField(max_length=256, blank=True)

    class Meta:
        ordering = ["day", "tag_key", "tag_value"]
        indexes = [
            models.Index(fields=["tag_key", "day"], name="tagusage_key_day"),
            models.Index(fields=["tag_key", "tag_value", "day"], name="tagusage_value_day"),
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.tag_key}={self.tag_value} team {self.team_id}"


class TagLatencyHistogramDaily(LatencyHistograms):
    """Latency histograms (see `LatencyHistograms`) per team and value of one rollup tag
    key, for percentiles under one tag filter."""

    tag_key = models.CharField(max_length=64)
    tag_value = models.CharField(max_length=256, blank=True)

    class Meta:
        ordering = ["day", "tag_key", "tag_value"]
        indexes = [
            models.Index(fields=["tag_key", "tag_value", "day"], name="taglatency_value_day"),
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.tag_key}={self.tag_value} team {self.team_id}"
