"""OpenAI and every OpenAI-compatible server (vLLM, Ollama, Together, Groq, DeepSeek...)."""

import time

from apps.proxy.providers.base import (
    CHAT,
    COMPLETION,
    EMBEDDING,
    RERANK,
    DeploymentInfo,
    Provider,
    StreamTranslator,
    UnsupportedRequest,
    UpstreamRequest,
    Usage,
)

_PATHS = {
    CHAT: "/chat/completions",
    COMPLETION: "/completions",
    EMBEDDING: "/embeddings",
    RERANK: "/rerank",
}


def upstream_body(kind: str, body: dict, deployment: DeploymentInfo) -> dict:
    """The client's body with the upstream model name, and usage forced on for streams."""
    out = dict(body)
    out["model"] = deployment.upstream_model
    if kind in (CHAT, COMPLETION) and out.get("stream"):
        # Billing needs the counts whether or not the client asked for them; the proxy drops
        # the usage chunk on the way back when the client did not ask.
        out["stream_options"] = {**(out.get("stream_options") or {}), "include_usage": True}
    return out


def normalize_rerank(data: dict, model_name: str) -> dict:
    """Any Cohere/Jina/Voyage/vLLM-style rerank answer -> the proxy's rerank shape.

    Shape: {id, object: "list", model, results: [{index, relevance_score, document?}],
    usage: {prompt_tokens, total_tokens[, search_units]}}.
    """
    raw_results = data.get("results")
    if raw_results is None:
        raw_results = data.get("data") or []  # Voyage answers in `data`
    results = []
    for item in raw_results:
        result = {
            "index": int(item["index"]),
            "relevance_score": float(item.get("relevance_score", item.get("score", 0.0))),
        }
        document = item.get("document")
        if document is not None:
            result["document"] = document if isinstance(document, dict) else {"text": document}
        results.append(result)

    meta = data.get("meta") or {}
    billed = meta.get("billed_units") or {}
    raw_usage = data.get("usage") or {}
    tokens = int(
        raw_usage.get("prompt_tokens")
        or raw_usage.get("total_tokens")
        or billed.get("input_tokens")
        or (meta.get("tokens") or {}).get("input_tokens")
        or 0
    )
    usage: dict = {"prompt_tokens": tokens, "total_tokens": tokens}
    if billed.get("search_units") is not None:
        # Cohere bills rerank per search unit, not per token; keep it for pricing rules.
        usage["search_units"] = int(billed["search_units"])
    return {
        "id": str(data.get("id") or ""),
        "object": "list",
        "model": model_name,
        "results": results,
        "usage": usage,
    }


class OpenAIStreamTranslator(StreamTranslator):
    """Passes OpenAI chunks through, renaming the model and noting the usage chunk."""

    def __init__(self, deployment: DeploymentInfo) -> None:
        self.usage = None
        self.model = deployment.model_name
        self.chunk_id = ""
        self.created = 0

    def feed(self, event: str | None, data: dict) -> list[dict]:
        if not isinstance(data, dict):
            return []
        if "error" in data and "choices" not in data:
            return [data]
        if not self.chunk_id:
            self.chunk_id = str(data.get("id") or "")
            self.created = int(data.get("created") or time.time())
        raw = data.get("usage")
        if raw:
            # Some servers repeat cumulative usage on every chunk; the last one wins.
            self.usage = Usage.from_openai(raw)
        chunk = dict(data)
        if "model" in chunk:
            chunk["model"] = self.model
        return [chunk]


class OpenAIProvider(Provider):
    """OpenAI's own API shape: the body passes through with the model renamed."""

    name = "openai"
    openai_native_stream = True
    kinds: frozenset[str] = frozenset({CHAT, COMPLETION, EMBEDDING, RERANK})

    def url(self, kind: str, deployment: DeploymentInfo) -> str:
        return deployment.base_url.rstrip("/") + _PATHS[kind]

    def headers(self, deployment: DeploymentInfo) -> dict[str, str]:
        # Lowercase like the upstream client's default, so the merged headers hold one
        # content-type (aiohttp sends both spellings of a name as two headers).
        headers = {"content-type": "application/json"}
        if deployment.api_key:
            headers["Authorization"] = f"Bearer {deployment.api_key}"
        return headers

    def check_kind(self, kind: str) -> None:
        if kind not in self.kinds:
            raise UnsupportedRequest(f"{self.name} deployments do not serve {kind} requests")

    def build(self, kind: str, body: dict, deployment: DeploymentInfo) -> UpstreamRequest:
        self.check_kind(kind)
        return UpstreamRequest(
            method="POST",
            url=self.url(kind, deployment),
            headers=self.headers(deployment),
            json=upstream_body(kind, body, deployment),
        )

    def parse(self, kind: str, data: dict, deployment: DeploymentInfo) -> dict:
        if kind == RERANK:
            return normalize_rerank(data, deployment.model_name)
        out = dict(data)
        out["model"] = deployment.model_name
        return out

    def stream_translator(self, deployment: DeploymentInfo) -> StreamTranslator:
        return OpenAIStreamTranslator(deployment)
