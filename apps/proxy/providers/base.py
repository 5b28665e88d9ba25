"""The seam between the proxy and each kind of upstream.

A provider turns an OpenAI-shaped request into the upstream's request, and the upstream's
answer (whole or streamed) back into OpenAI's shape. Providers are pure: no I/O here, the
proxy's upstream client sends what `build` returns.
"""

from dataclasses import dataclass, field
from decimal import Decimal

from apps.usage.capture import sane_token_count

# Request kinds the proxy serves.
CHAT = "chat"
COMPLETION = "completion"
EMBEDDING = "embedding"
RERANK = "rerank"


class UnsupportedRequest(Exception):
    """The request cannot be expressed for this upstream; the proxy answers 400 with the message."""


@dataclass(frozen=True)
class DeploymentInfo:
    """An immutable, in-memory snapshot of a Deployment row, credentials resolved."""

    id: int
    name: str
    model_name: str
    provider: str
    upstream_model: str
    base_url: str
    api_key: str = field(default="", repr=False)
    api_version: str = ""
    timeout_seconds: float = 60.0
    priority: int = 0
    weight: int = 1
    price_model_name: str = ""
    input_cost_per_token: Decimal | None = None
    output_cost_per_token: Decimal | None = None
    cached_input_cost_per_token: Decimal | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class UpstreamRequest:
    method: str
    url: str
    headers: dict[str, str]
    json: dict


@dataclass
class Usage:
    """Token counts as OpenAI reports them: `input_tokens` includes the cached ones.

    `suspect` marks counts an upstream reported that are not believable (negative, not
    whole numbers, beyond `MAX_TOKENS_PER_REQUEST`): the proxy then bills its own estimate
    instead, and the row is flagged so finance can see it.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    estimated: bool = False
    suspect: bool = False

    @classmethod
    def from_counts(cls, *counts: object) -> "Usage":
        """Usage from raw (input, output, cached) values; None counts as 0."""
        sane = [0 if value is None else sane_token_count(value) for value in counts]
        if None in sane:
            return cls(suspect=True)
        return cls(*sane)  # type: ignore[arg-type]

    @classmethod
    def from_openai(cls, raw: object) -> "Usage":
        """Counts from an OpenAI `usage` object (`input_tokens`/`output_tokens` as fallbacks)."""
        if not isinstance(raw, dict):
            return cls(suspect=True)
        details = raw.get("prompt_tokens_details")
        return cls.from_counts(
            raw.get("prompt_tokens") or raw.get("input_tokens"),
            raw.get("completion_tokens") or raw.get("output_tokens"),
            details.get("cached_tokens") if isinstance(details, dict) else None,
        )

    def to_openai(self) -> dict:
        """The OpenAI `usage` object for these counts."""
        return {
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }


class StreamTranslator:
    """Turns upstream stream events into OpenAI chat.completion.chunk dicts.

    `feed` gets one decoded SSE event (event name, parsed JSON data) and returns the OpenAI
    chunks to send; `usage` holds the usage seen so far (None if the upstream sent none).
    `chunk_id`, `created` and `model` are those of the chunks emitted so far, so that the
    proxy can append a usage chunk of the same stream with `usage_chunk()`.
    """

    usage: Usage | None = None
    chunk_id: str = ""
    created: int = 0
    model: str = ""

    def feed(self, event: str | None, data: dict) -> list[dict]:
        raise NotImplementedError

    def usage_chunk(self, usage: Usage | None = None) -> dict:
        """OpenAI's final usage chunk (empty `choices`), from `usage` or else `self.usage`.

        Pass `usage` to send counts the proxy estimated itself; with neither, counts are zero.
        """
        usage = usage or self.usage or Usage()
        return {
            "id": self.chunk_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage.to_openai(),
        }


class Provider:
    """Base class of the provider adapters."""

    name: str = ""
    # True when the upstream streams OpenAI chunks already, so the proxy can relay raw bytes.
    openai_native_stream: bool = True

    def build(self, kind: str, body: dict, deployment: DeploymentInfo) -> UpstreamRequest:
        raise NotImplementedError

    def parse(self, kind: str, data: dict, deployment: DeploymentInfo) -> dict:
        """Upstream JSON answer -> OpenAI-shaped JSON answer (the client-facing model name)."""
        raise NotImplementedError

    def usage(self, kind: str, openai_data: dict) -> Usage | None:
        """Usage from an OpenAI-shaped answer; None when it carries none."""
        raw = openai_data.get("usage")
        return Usage.from_openai(raw) if raw else None

    def stream_translator(self, deployment: DeploymentInfo) -> StreamTranslator:
        raise NotImplementedError

    def error_message(self, data: dict) -> str:
        """The human-readable message of an upstream error answer (OpenAI's shape here)."""
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict):
            return str(error.get("message") or error.get("type") or "upstream error")
        if isinstance(error, str) and error:
            return error
        return str((data or {}).get("message") or "upstream error")
