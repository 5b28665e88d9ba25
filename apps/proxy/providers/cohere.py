"""Cohere-style rerank (Cohere v2; Jina and Voyage answers are read too)."""

from typing import Any

from apps.proxy.providers.base import RERANK, DeploymentInfo, UpstreamRequest
from apps.proxy.providers.openai import OpenAIProvider

_FIELDS = ("query", "documents", "top_n", "return_documents", "max_tokens_per_doc")


class CohereRerankProvider(OpenAIProvider):
    """`{base_url}/rerank` with Bearer auth; base_url like `https://api.cohere.com/v2`."""

    name = "cohere"
    kinds = frozenset({RERANK})

    def build(self, kind: str, body: dict[str, Any], deployment: DeploymentInfo) -> UpstreamRequest:
        self.check_kind(kind)
        # Cohere rejects fields it does not know, so only the rerank ones go upstream.
        out = {name: body[name] for name in _FIELDS if body.get(name) is not None}
        out["model"] = deployment.upstream_model
        return UpstreamRequest(
            method="POST",
            url=self.url(kind, deployment),
            headers=self.headers(deployment),
            json=out,
        )
