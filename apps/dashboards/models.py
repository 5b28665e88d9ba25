"""Dashboard rollups: one UTC day of usage summed per the dimensions the dashboards chart.

Billing's daily rollup groups by subject, model and tag values, which is what chargebacks
need; the dashboards also break usage down by provider and error type and need latency
percentiles, which cannot be summed. These two tables hold exactly that, small enough to read
90 days of a busy gateway in milliseconds. Both are replaced wholesale per day by
`dashboard_rollup_day`, in one transaction, so a re-run picks up late rows.
"""

from django.db import models


class UsageCubeDaily(models.Model):
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
    requests = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=24, decimal_places=10, default=0)
    computed_at = models.DateTimeField()

    class Meta:
        ordering = ["day", "team_id", "model"]
        indexes = [models.Index(fields=["day", "team_id"], name="cube_day_team")]

    def __str__(self) -> str:
        return f"{self.day} team {self.team_id} {self.model}/{self.provider}"


class LatencyHistogramDaily(models.Model):
    """Latency of one day's successful requests, and time to first token of its successful
    streams, per team, model and provider, as log-scale histograms (`histograms.py`).

    Not per user: that would multiply rows by users for little gain; reads scoped to a user
    bucket that user's raw rows instead. Rows with `all_teams` sum every team (`team_id` is
    then null) so org-wide reads merge a fraction of the rows.
    """

    day = models.DateField()
    all_teams = models.BooleanField(default=False)
    team_id = models.BigIntegerField(null=True)
    model = models.CharField(max_length=200)
    provider = models.CharField(max_length=20, blank=True)
    requests = models.BigIntegerField(default=0)
    streams = models.BigIntegerField(default=0)
    # {bucket: count}; JSON object keys are text.
    latency = models.JSONField(default=dict)
    ttft = models.JSONField(default=dict)
    computed_at = models.DateTimeField()

    class Meta:
        ordering = ["day", "team_id", "model"]
        indexes = [
            models.Index(fields=["all_teams", "day", "team_id"], name="latencyhist_day_team")
        ]

    def __str__(self) -> str:
        return f"{self.day} team {self.team_id} {self.model}/{self.provider}"
