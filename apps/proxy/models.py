from django.conf import settings
from django.db import models

from apps.outbound.guard import check_url

from .crypto import check_api_key_env


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


def validate_upstream_url(value: str) -> None:
    """The outbound guard on a base URL, against the allowlist as configured when it runs."""
    check_url(value, settings.UPSTREAM_ALLOWED_HOSTS)


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
    # The same rules as the YAML loader (services.py): any ModelForm, the admin's included,
    # and full_clean() refuse what the gateway would refuse to connect to or to read.
    base_url = models.URLField(max_length=500, validators=[validate_upstream_url])
    api_version = models.CharField(max_length=50, blank=True)
    api_key_env = models.CharField(max_length=100, blank=True, validators=[check_api_key_env])
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
    cache_write_cost_per_token = models.DecimalField(
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
