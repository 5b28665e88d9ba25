"""Azure OpenAI: OpenAI's shapes, with the deployment in the path and an `api-key` header."""

from urllib.parse import quote

from apps.proxy.providers.base import CHAT, COMPLETION, EMBEDDING, DeploymentInfo
from apps.proxy.providers.openai import OpenAIProvider

# The GA data-plane version in use when a deployment does not name one.
DEFAULT_API_VERSION = "2024-10-21"

_PATHS = {
    CHAT: "/chat/completions",
    COMPLETION: "/completions",
    EMBEDDING: "/embeddings",
}


class AzureOpenAIProvider(OpenAIProvider):
    """`upstream_model` is the Azure deployment name; `base_url` the resource endpoint."""

    name = "azure_openai"
    kinds = frozenset(_PATHS)

    def url(self, kind: str, deployment: DeploymentInfo) -> str:
        base = deployment.base_url.rstrip("/")
        # Accept an endpoint given with or without the `/openai` suffix.
        base = base.removesuffix("/openai")
        api_version = deployment.api_version or DEFAULT_API_VERSION
        name = quote(deployment.upstream_model, safe="")
        return (
            f"{base}/openai/deployments/{name}{_PATHS[kind]}"
            f"?api-version={quote(api_version, safe='')}"
        )

    def headers(self, deployment: DeploymentInfo) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if deployment.api_key:
            headers["api-key"] = deployment.api_key
        return headers
