"""Provider adapters by the `provider` name of a deployment."""

from typing import Any

from apps.proxy.providers.anthropic import AnthropicProvider
from apps.proxy.providers.azure import AzureOpenAIProvider
from apps.proxy.providers.base import DeploymentInfo, Provider
from apps.proxy.providers.cohere import CohereRerankProvider
from apps.proxy.providers.openai import OpenAIProvider


class UnknownProvider(KeyError):
    """No adapter for this provider name."""

    def __str__(self) -> str:
        return f"unknown provider {self.args[0]!r}" if self.args else "unknown provider"


# Adapters hold no state, so one instance of each serves every request.
_OPENAI = OpenAIProvider()
_ANTHROPIC = AnthropicProvider()
_PROVIDERS: dict[str, Provider] = {
    "openai": _OPENAI,
    "azure_openai": AzureOpenAIProvider(),
    "anthropic": _ANTHROPIC,
    "cohere": CohereRerankProvider(),
    # The built-in simulator speaks OpenAI unless told to play Anthropic.
    "simulator": _OPENAI,
}


def get_provider(provider_type: str, extra: dict[str, Any] | None = None) -> Provider:
    """The adapter for `provider_type`; `extra` is the deployment's extra settings."""
    if provider_type == "simulator" and (extra or {}).get("simulator_mode") == "anthropic":
        return _ANTHROPIC
    try:
        return _PROVIDERS[provider_type]
    except KeyError:
        raise UnknownProvider(provider_type) from None


def provider_for(deployment: DeploymentInfo) -> Provider:
    """The adapter serving `deployment`."""
    return get_provider(deployment.provider, deployment.extra)
