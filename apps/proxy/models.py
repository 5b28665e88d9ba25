import uuid

from django.db import models


class ProviderType(models.TextChoices):
    OPENAI = "openai", "OpenAI-compatible"
    AZURE_OPENAI = "azure_openai", "Azure OpenAI"
    ANTHROPIC = "anthropic", "Anthropic Messages"
    COHERE = "cohere", "Cohere-style rerank"
    SIMULATOR = "simulator", "Built-in simulator"


class ModelMode(models.TextChoices):
    CHAT = "chat", "Chat"
    COMPLETION = "completion", "Completion"
    EMBEDDING = "embedding", "Embedding"
    RERANK = "rerank", "Rerank"


class RoutingStrategy(models.TextChoices):
    PRIORITY = "priority", "Priority (ordered failover)"
    WEIGHTED = "weighted", "Weighted (traffic split by weight)"
    LATENCY = "latency", "Lowest recent latency"
    LEAST_BUSY = "least_busy", "Fewest requests in flight"


class GatewayModel(models.Model):
    """A model name clients ask for; it maps to one or more deployments."""

    name = models.CharField(max_length=200, unique=True)
    mode = models.CharField(max_length=20, choices=ModelMode.choices, default=ModelMode.CHAT)
    description = models.TextField(blank=True)
    routing_strategy = models.CharField(
        max_length=20, choices=RoutingStrategy.choices, default=RoutingStrategy.PRIORITY
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Deployment(models.Model):
    """One upstream that can serve a model: provider, upstream model name, URL, credentials.

    Credentials are either the name of an environment variable (`api_key_env`) or a secret
    encrypted with settings.UPSTREAM_SECRET_KEY (`api_key_encrypted`); never plaintext.
    Prices fall back to the catalog entry named `price_model_name` (or `upstream_model`).
    """

    model = models.ForeignKey(GatewayModel, on_delete=models.CASCADE, related_name="deployments")
    name = models.CharField(max_length=200)
    provider = models.CharField(max_length=20, choices=ProviderType.choices)
    upstream_model = models.CharField(max_length=200)
    base_url = models.URLField(max_length=500)
    api_version = models.CharField(max_length=50, blank=True)
    api_key_env = models.CharField(max_length=100, blank=True)
    api_key_encrypted = models.TextField(blank=True)
    timeout_seconds = models.FloatField(default=60.0)
    priority = models.IntegerField(default=0)
    weight = models.PositiveIntegerField(default=1)
    price_model_name = models.CharField(max_length=200, blank=True)
    input_cost_per_token = models.DecimalField(
        max_digits=20, decimal_places=12, null=True, blank=True
    )
    output_cost_per_token = models.DecimalField(
        max_digits=20, decimal_places=12, null=True, blank=True
    )
    cached_input_cost_per_token = models.DecimalField(
        max_digits=20, decimal_places=12, null=True, blank=True
    )
    extra = models.JSONField(default=dict, blank=True)
    is_active = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model__name", "priority", "id"]
        constraints = [
            models.UniqueConstraint(fields=["model", "name"], name="deployment_unique_name"),
        ]

    def __str__(self) -> str:
        return f"{self.model.name}/{self.name}"


class UsageRecord(models.Model):
    """One row per proxied request: who, what, tokens, cost, timings, tags.

    Written in batches by the usage writer, idempotent on `request_id`. Attribution always
    comes from the key, never from tags.
    """

    request_id = models.CharField(max_length=64, unique=True)
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
    cached_tokens = models.PositiveIntegerField(default=0)
    tokens_estimated = models.BooleanField(default=False)
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

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["team_id", "created_at"], name="usage_team_time")]

    def __str__(self) -> str:
        return f"{self.request_id} {self.model} {self.status_code}"

    @staticmethod
    def new_request_id() -> str:
        return f"req_{uuid.uuid4().hex}"
