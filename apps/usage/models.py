"""The usage ledger's tables: one row per proxied request, and the rows that could not be
written."""

import uuid

from django.db import models

from .tags import MAX_TAG_VALUE_CHARS

# Rows that logged a body: the partial index `usage_logged_bodies` and body retention's
# query must use this one condition, or PostgreSQL stops using the index for the query.
LOGGED_BODY = models.Q(request_body__isnull=False) | models.Q(response_body__isnull=False)


class UsageRecord(models.Model):
    """One row per proxied request: who, what, tokens, cost, timings, tags.

    Written in batches by the usage writer, idempotent on `request_id`. Attribution always
    comes from the key, never from tags. Values are normalised at capture
    (`apps.usage.capture`): strings carry no control characters, token counts are
    non-negative and bounded; an upstream count outside the bound is replaced by the
    gateway's estimate and the row is flagged `usage_suspect`. The table keeps the name it
    had when the proxy owned it.

    On PostgreSQL the table is partitioned by month of `created_at` (migration 0004,
    `apps.usage.partitions`), and a unique index on a partitioned table must hold the
    partition key: uniqueness is (`request_id`, `created_at`), and the primary key is
    (`id`, `created_at`). Both are as strong as the old keys here: a request's `created_at`
    is fixed when the proxy captures it and travels with the event through the buffer, the
    spool and dead-letter replays, so a replayed copy always collides with the first; and
    only the table's own sequence hands out ids. SQLite (embedded mode) keeps one table and
    also a unique index on `request_id` alone, outside this model state (migration 0004;
    `tests/usage/test_partitions.py` checks it survives later migrations).
    """

    request_id = models.CharField(max_length=64)
    created_at = models.DateTimeField(db_index=True)
    # When the row reached the database: the watermark for incremental exports.
    inserted_at = models.DateTimeField(auto_now_add=True, db_index=True)
    api_key_id = models.BigIntegerField(null=True, db_index=True)
    key_lineage_id = models.UUIDField(null=True, db_index=True)
    user_id = models.BigIntegerField(null=True, db_index=True)
    team_id = models.BigIntegerField(null=True, db_index=True)
    virtual_account_id = models.BigIntegerField(null=True, db_index=True)
    end_user = models.CharField(max_length=256, blank=True)
    model = models.CharField(max_length=200, db_index=True)
    deployment = models.CharField(max_length=200, blank=True)
    provider = models.CharField(max_length=20, blank=True)
    request_type = models.CharField(max_length=20)
    is_stream = models.BooleanField(default=False)
    status_code = models.PositiveSmallIntegerField()
    error_type = models.CharField(max_length=64, blank=True)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    # Prompt caching, OpenAI's convention: both counts are part of `input_tokens`, so fresh
    # input is input - cached - cache_write. `cached_tokens` are cache reads. Cache writes
    # (Anthropic's cache_creation_input_tokens) have a database default too, as
    # `usage_suspect` has: rows from a writer that predates the column still insert.
    cached_tokens = models.PositiveIntegerField(default=0)
    cache_write_tokens = models.PositiveIntegerField(default=0, db_default=0)
    tokens_estimated = models.BooleanField(default=False)
    # A database default too: rows written by a writer that predates the column (a rolling
    # upgrade) or by COPY (`generate_usage`) still insert.
    usage_suspect = models.BooleanField(default=False, db_default=False)
    cost_usd = models.DecimalField(max_digits=18, decimal_places=10, default=0)
    latency_ms = models.FloatField(default=0)
    ttft_ms = models.FloatField(null=True)
    upstream_latency_ms = models.FloatField(null=True)
    overhead_ms = models.FloatField(null=True)
    attempts = models.PositiveSmallIntegerField(default=1)
    client_disconnected = models.BooleanField(default=False)
    tags = models.JSONField(default=dict)
    request_body = models.JSONField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True)
    # The data region the row was written in (apps/usage/regions.py): every export and CSV
    # carries it. A database default too, for writers that predate the column.
    region = models.CharField(max_length=32, blank=True, default="", db_default="")

    class Meta:
        db_table = "proxy_usagerecord"
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["request_id", "created_at"], name="usage_request_once")
        ]
        indexes = [
            models.Index(fields=["team_id", "created_at"], name="usage_team_time"),
            # Only rows that logged a body: body retention finds the old ones without reading
            # every row, and a gateway that logs no bodies pays nothing for it.
            models.Index(
                fields=["created_at"],
                name="usage_logged_bodies",
                condition=LOGGED_BODY,
            ),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.model} {self.status_code}"

    @staticmethod
    def new_request_id() -> str:
        return f"req_{uuid.uuid4().hex}"


class UsageDeadLetter(models.Model):
    """A usage event the database refused even when written on its own.

    The writer isolates such a row (bisecting the batch it came in) so that it never holds
    back the others. The event is kept verbatim as JSON text (jsonb would refuse the same
    NUL that may have caused the rejection) with the database's reason, shown to admins,
    counted in /metrics and replayable after a fix. Replaying goes through the same
    idempotent insert, so a replayed row is never counted twice.
    """

    request_id = models.CharField(max_length=64, unique=True)
    payload = models.TextField()
    error = models.TextField()
    first_failed_at = models.DateTimeField(auto_now_add=True)
    last_failed_at = models.DateTimeField(auto_now=True)
    failures = models.PositiveIntegerField(default=1)
    replayed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-last_failed_at"]
        indexes = [models.Index(fields=["replayed_at"], name="usage_deadletter_open")]

    def __str__(self) -> str:
        # No error text: a database's error may quote the row (tags, bodies), and this name is
        # copied into the primary's audit log.
        return f"dead letter {self.request_id}"


class UsageLateDay(models.Model):
    """A past UTC day that received usage rows after it ended (a spool replay, a backlog
    written after an outage, a dead letter replayed).

    The writer marks the day in the same transaction as the rows, so no rollup of that day
    is trusted while the mark stands (`apps.usage.coverage`): readers take the day's raw
    rows instead, and the next scheduled rollup run re-rolls the day and clears the mark.
    Late rows are therefore never missing from a statement, whichever month they belong to.
    """

    day = models.DateField(unique=True)
    marked_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.day} (late rows since {self.marked_at:%Y-%m-%d %H:%M})"


class UsageLateHour(models.Model):
    """An hour of today that received usage rows after it settled (a long stream that began
    in it, a writer backlog): like `UsageLateDay`, its hourly rollup is not trusted while
    the mark stands, and the next rollup run re-rolls that hour alone and clears the mark."""

    hour = models.DateTimeField(unique=True)
    marked_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H:00} (late rows since {self.marked_at:%H:%M})"


# The rollups: usage summed per UTC day (and, for today, per UTC hour) per the dimensions
# readers ask for, built by the one rollup run (`apps.usage.rollup_tables`) and read
# through `apps.usage.coverage`'s rule by statements, insights, quota seeding, the usage
# API and the dashboards. Each is replaced wholesale per period in one transaction, so a
# re-run picks up late rows and the tables always cover the same periods. The daily tables
# keep the names they had when the dashboards owned them.


class UsageSums(models.Model):
    """Requests, errors, tokens and cost summed over a period's rows (abstract)."""

    requests = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cached_tokens = models.BigIntegerField(default=0)
    cache_write_tokens = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=24, decimal_places=10, default=0)
    computed_at = models.DateTimeField()

    class Meta:
        abstract = True


class LatencyHistograms(models.Model):
    """A period's latency histogram of successful requests and TTFT histogram of successful
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


class CubeFields(UsageSums):
    """Requests, errors, tokens and cost per team, user, virtual account, model, provider,
    error type and stream flag (abstract). Ids are plain, like `UsageRecord`'s."""

    day = models.DateField()
    team_id = models.BigIntegerField(null=True)
    user_id = models.BigIntegerField(null=True)
    virtual_account_id = models.BigIntegerField(null=True)
    model = models.CharField(max_length=200)
    provider = models.CharField(max_length=20, blank=True)
    error_type = models.CharField(max_length=64, blank=True)
    is_stream = models.BooleanField(default=False)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.day} team {self.team_id} {self.model}/{self.provider}"


class ModelLatencyFields(LatencyHistograms):
    """Latency histograms (see `LatencyHistograms`) per team, model and provider (abstract).

    Not per user: that would multiply rows by users for little gain; reads scoped to a user
    bucket that user's raw rows instead. The `all_teams` rows let org-wide reads merge a
    fraction of the rows.
    """

    model = models.CharField(max_length=200)
    provider = models.CharField(max_length=20, blank=True)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.day} team {self.team_id} {self.model}/{self.provider}"


class TagUsageFields(UsageSums):
    """Usage per team, user, virtual account, model and the value of one rollup tag key
    (`BILLING_ROLLUP_TAG_KEYS` and the customer key; "" when the tag is absent) (abstract).

    One row set per key rather than a cross product of all keys' values: each key's rows
    hold all of the period's usage once, so a customer's statement (per model, for a tier's
    included models) and a tag ranking read the same rows.
    """

    day = models.DateField()
    team_id = models.BigIntegerField(null=True)
    user_id = models.BigIntegerField(null=True)
    virtual_account_id = models.BigIntegerField(null=True)
    model = models.CharField(max_length=200, blank=True)
    tag_key = models.CharField(max_length=64)
    tag_value = models.CharField(max_length=MAX_TAG_VALUE_CHARS, blank=True)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.day} {self.tag_key}={self.tag_value} team {self.team_id}"


class TagLatencyFields(LatencyHistograms):
    """Latency histograms (see `LatencyHistograms`) per team and value of one rollup tag
    key, for percentiles under one tag filter (abstract)."""

    tag_key = models.CharField(max_length=64)
    tag_value = models.CharField(max_length=MAX_TAG_VALUE_CHARS, blank=True)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.day} {self.tag_key}={self.tag_value} team {self.team_id}"


class UsageCubeDaily(CubeFields):
    class Meta:
        db_table = "dashboards_usagecubedaily"
        ordering = ["day", "team_id", "model"]
        indexes = [
            models.Index(fields=["day", "team_id"], name="cube_day_team"),
            # Coverage (`apps.usage.coverage`) asks each day's earliest computed_at: this
            # answers it from the index instead of reading every rollup row of the range.
            models.Index(fields=["day", "computed_at"], name="cube_day_computed"),
        ]


class LatencyHistogramDaily(ModelLatencyFields):
    class Meta:
        db_table = "dashboards_latencyhistogramdaily"
        ordering = ["day", "team_id", "model"]
        indexes = [
            models.Index(fields=["all_teams", "day", "team_id"], name="latencyhist_day_team")
        ]


class TagUsageDaily(TagUsageFields):
    class Meta:
        db_table = "dashboards_tagusagedaily"
        ordering = ["day", "tag_key", "tag_value"]
        indexes = [
            models.Index(fields=["tag_key", "day"], name="tagusage_key_day"),
            models.Index(fields=["tag_key", "tag_value", "day"], name="tagusage_value_day"),
        ]


class TagLatencyHistogramDaily(TagLatencyFields):
    class Meta:
        db_table = "dashboards_taglatencyhistogramdaily"
        ordering = ["day", "tag_key", "tag_value"]
        indexes = [
            models.Index(fields=["tag_key", "tag_value", "day"], name="taglatency_value_day"),
        ]


# Today's hours: `hour` is the hour's start (UTC), `day` its date, so readers filter and
# group them as they do the daily rows. Rows of past days are dropped once the day is
# rolled up (`apps.usage.rollups`).


class UsageRolledHour(models.Model):
    """An hour of today the hourly rollup has rolled: its rows hold the usage of [`hour`,
    `until`), the whole hour once it has settled, else up to the settle margin before the
    run (the current hour, re-rolled by each run). The coverage rule reads this
    (`apps.usage.coverage.covered_hours`), so an hour without usage is rolled once too."""

    hour = models.DateTimeField(unique=True)
    until = models.DateTimeField()
    computed_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H:00} rolled at {self.computed_at:%H:%M:%S}"


class UsageCubeHourly(CubeFields):
    hour = models.DateTimeField()

    class Meta:
        ordering = ["hour", "team_id", "model"]
        indexes = [models.Index(fields=["hour", "computed_at"], name="cubehour_hour_computed")]


class LatencyHistogramHourly(ModelLatencyFields):
    hour = models.DateTimeField()

    class Meta:
        ordering = ["hour", "team_id", "model"]
        indexes = [models.Index(fields=["all_teams", "hour"], name="latencyhour_hour")]


class TagUsageHourly(TagUsageFields):
    hour = models.DateTimeField()

    class Meta:
        ordering = ["hour", "tag_key", "tag_value"]
        indexes = [models.Index(fields=["tag_key", "hour"], name="taghour_key_hour")]


class TagLatencyHistogramHourly(TagLatencyFields):
    hour = models.DateTimeField()

    class Meta:
        ordering = ["hour", "tag_key", "tag_value"]
        indexes = [models.Index(fields=["tag_key", "tag_value", "hour"], name="taglathour_value")]
