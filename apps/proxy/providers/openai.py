"""OpenAI and every OpenAI-compatible server (vLLM, Ollama, Together, Groq, DeepSeek...)."""

import time
from typing import Any

import orjson

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
    usage_chunk,
)
from apps.usage.capture import sane_token_count

_PATHS = {
    CHAT: "/chat/completions",
    COMPLETION: "/completions",
    EMBEDDING: "/embeddings",
    RERANK: "/rerank",
}


def upstream_body(kind: str, body: dict[str, Any], deployment: DeploymentInfo) -> dict[str, Any]:
    """The client's body with the upstream model name, and usage forced on for streams."""
    out = dict(body)
    out["model"] = deployment.upstream_model
    if kind in (CHAT, COMPLETION) and out.get("stream"):
        # Billing needs the counts whether or not the client asked for them; the proxy drops
        # the usage chunk on the way back when the client did not ask.
        out["stream_options"] = {**(out.get("stream_options") or {}), "include_usage": True}
    return out


def normalize_rerank(data: dict[str, Any], model_name: str) -> dict[str, Any]:
    """Any Cohere/Jina/Voyage/vLLM-style rerank answer -> the proxy's rerank shape.

    Shape: {id, object: "list", model, results: [{index, relevance_score, document?}],
    usage: {prompt_tokens, total_tokens[, search_units]}}.
    """
    raw_results = data.get("results")
    if raw_results is None:
        raw_results = data.get("data") or []  # Voyage answers in `data`
    results = []
    for item in raw_results:
        result: dict[str, Any] = {
            "index": int(item["index"]),
            "relevance_score": float(item.get("relevance_score", item.get("score", 0.0))),
        }
        document = item.get("document")
        if document is not None:
            result["document"] = document if isinstance(document, dict) else {"text": document}
        results.append(result)

    meta = _mapping(data.get("meta"))
    billed = _mapping(meta.get("billed_units"))
    raw_usage = data.get("usage") or {}
    if isinstance(raw_usage, dict):
        tokens = (
            raw_usage.get("prompt_tokens")
            or raw_usage.get("total_tokens")
            or billed.get("input_tokens")
            or _mapping(meta.get("tokens")).get("input_tokens")
            or 0
        )
    else:
        tokens = raw_usage
    # An unbelievable count is passed on as it came, for `Usage.from_openai` to flag.
    count = sane_token_count(tokens)
    if count is not None:
        tokens = count
    usage: dict[str, Any] = {"prompt_tokens": tokens, "total_tokens": tokens}
    search_units = sane_token_count(billed.get("search_units"))
    if search_units is not None:
        # Cohere bills rerank per search unit, not per token; keep it for pricing rules.
        usage["search_units"] = search_units
    return {
        "id": str(data.get("id") or ""),
        "object": "list",
        "model": model_name,
        "results": results,
        "usage": usage,
    }


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class OpenAIStreamRelay:
    """Relays an OpenAI-native stream chunk by chunk, as the upstream's bytes when unchanged.

    Usage is taken out of the stream: the upstream is always asked for it (`upstream_body`),
    and the proxy ends the stream with one usage chunk of the counts it bills
    (`usage_chunk`) when, and only when, the client asked for usage.
    """

    def __init__(self, deployment: DeploymentInfo) -> None:
        self.usage: Usage | None = None
        self.reported: dict[str, Any] | None = None  # the upstream's own usage object, as it came
        self.model = deployment.model_name
        self.rename = deployment.upstream_model != deployment.model_name
        self.chunk_id = ""
        self.created = 0

    def feed(self, chunk: dict[str, Any], raw: bytes) -> bytes | None:
        """The SSE bytes to send for one upstream chunk (None: nothing to send)."""
        if not self.chunk_id:
            self.chunk_id = str(chunk.get("id") or "")
            created = chunk.get("created")
            self.created = created if isinstance(created, int) else int(time.time())
            if not self.rename and isinstance(chunk.get("model"), str):
                self.model = chunk["model"]
        changed = False
        if self.rename and "model" in chunk:
            chunk["model"] = self.model
            changed = True
        usage = chunk.get("usage")
        if usage is not None:
            if usage:
                # Some servers repeat cumulative usage on every chunk; the last one wins.
                self.usage = Usage.from_openai(usage)
                self.reported = usage if isinstance(usage, dict) else None
            if not chunk.get("choices"):
                return None
            del chunk["usage"]
            changed = True
        return b"data: " + (orjson.dumps(chunk) if changed else raw) + b"\n\n"

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        """The final usage chunk for the counts billed, `usage`."""
        chunk = usage_chunk(self.chunk_id, self.created, self.model, usage)
        if usage is self.usage and self.reported is not None:
            # The upstream's counts are billed: pass its object on, with the details
            # (reasoning tokens, audio tokens...) the proxy does not model.
            chunk["usage"] = self.reported
        return chunk


class OpenAIStreamTranslator(StreamTranslator):
    """Passes OpenAI chunks through, renaming the model and noting the usage chunk."""

    def __init__(self, deployment: DeploymentInfo) -> None:
        self.usage = None
        self.model = deployment.model_name
        self.chunk_id = ""
        self.created = 0

    def feed(self, event: str | None, data: dict[str, Any]) -> list[dict[str, Any]]:
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

    def build(self, kind: str, body: dict[str, Any], deployment: DeploymentInfo) -> UpstreamRequest:
        self.check_kind(kind)
        return UpstreamRequest(
            method="POST",
            url=self.url(kind, deployment),
            headers=self.headers(deployment),
            json=upstream_body(kind, body, deployment),
        )

    def parse(self, kind: str, data: dict[str, Any], deployment: DeploymentInfo) -> dict[str, Any]:
        if kind == RERANK:
            return normalize_rerank(data, deployment.model_name)
        out = dict(data)
        out["model"] = deployment.model_name
        return out

    def stream_translator(self, deployment: DeploymentInfo) -> StreamTranslator:
        return OpenAIStreamTranslator(deployment)
