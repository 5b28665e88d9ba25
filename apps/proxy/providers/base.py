"""The seam between the proxy and each kind of upstream.

A provider turns an OpenAI-shaped request into the upstream's request, and the upstream's
answer (whole or streamed) back into OpenAI's shape. Providers are pure: no I/O here, the
proxy's upstream client sends what `build` returns.
"""

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

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
    cache_write_cost_per_token: Decimal | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class UpstreamRequest:
    method: str
    url: str
    headers: dict[str, str]
    json: dict[str, Any]


class InvalidAnswer(Exception):
    """An upstream's answer is not of the shape its API promises; the message says how.

    Messages are fixed texts (never the answer's bytes), so they may be shown to the client.
    """


# Usage keys read in order: OpenAI's names first, the Responses-style names as fallbacks.
_PROMPT_KEYS = ("prompt_tokens", "input_tokens")
_COMPLETION_KEYS = ("completion_tokens", "output_tokens")
_MISSING = object()


def _first_present(
    raw: dict[str, Any], names: tuple[str, ...], default: object = _MISSING
) -> object:
    for name in names:
        if name in raw:
            return raw[name]
    return default


@dataclass
class Usage:
    """Token counts as OpenAI reports them: `input_tokens` includes the prompt-cache reads
    (`cached_tokens`) and writes (`cache_write_tokens`, which only Anthropic reports apart).

    `suspect` marks counts an upstream reported that are not believable (negative, not
    whole numbers, beyond `MAX_TOKENS_PER_REQUEST`, null, more cache reads and writes than
    input): the proxy then bills its own estimate instead, and the row is flagged so finance
    can see it.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    estimated: bool = False
    suspect: bool = False

    @classmethod
    def from_counts(cls, *counts: object) -> "Usage":
        """Usage from raw (input, output[, cached[, cache write]]) values; None counts as 0."""
        sane = [0 if value is None else sane_token_count(value) for value in counts]
        if None in sane:
            return cls(suspect=True)
        usage = cls(*sane)  # type: ignore[arg-type]
        if usage.cached_tokens + usage.cache_write_tokens > usage.input_tokens:
            return cls(suspect=True)
        return usage

    @classmethod
    def from_openai(cls, raw: object) -> "Usage":
        """Counts from an OpenAI `usage` object (`input_tokens`/`output_tokens` as fallbacks).

        The prompt count must be there and the completion count must not be null (it may be
        missing: embeddings and rerank report none); a missing or null cached count is 0.
        """
        if not isinstance(raw, dict):
            return cls(suspect=True)
        prompt = _first_present(raw, _PROMPT_KEYS)
        completion = _first_present(raw, _COMPLETION_KEYS, 0)
        if prompt is _MISSING or prompt is None or completion is None:
            return cls(suspect=True)
        details = raw.get("prompt_tokens_details")
        return cls.from_counts(
            prompt, completion, details.get("cached_tokens") if isinstance(details, dict) else None
        )

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI `usage` object for these counts: OpenAI has no cache write count, so
        cache writes are in `prompt_tokens` only."""
        return {
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }


def usage_chunk(chunk_id: str, created: int, model: str, usage: Usage) -> dict[str, Any]:
    """OpenAI's final usage chunk of a stream: empty `choices`, the usage object."""
    return {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage.to_openai(),
    }


# The list each kind of OpenAI answer carries its results in.
_ITEMS_KEY = {CHAT: "choices", COMPLETION: "choices", EMBEDDING: "data", RERANK: "results"}


def check_answer(kind: str, data: object) -> None:
    """Raise InvalidAnswer unless `data` has the OpenAI shape of a `kind` answer.

    Checked on what `Provider.parse` returns, so one check covers every adapter, and the
    proxy never sends a 200 it could not have parsed itself (nor trips over one: a 500).
    """
    if not isinstance(data, dict):
        raise InvalidAnswer("the answer is not a JSON object")
    key = _ITEMS_KEY[kind]
    items = data.get(key)
    if not isinstance(items, list):
        if "error" in data:
            raise InvalidAnswer("the answer is an error object")
        raise InvalidAnswer(f"the answer has no '{key}' list")
    for item in items:
        if not isinstance(item, dict):
            raise InvalidAnswer(f"an item of '{key}' is not an object")
        if kind == CHAT:
            message = item.get("message")
            if not isinstance(message, dict):
                raise InvalidAnswer("a choice has no message object")
            content = message.get("content")
            if content is not None and not isinstance(content, str | list):
                raise InvalidAnswer("a message content is neither text nor a list of parts")
            if not isinstance(message.get("tool_calls") or [], list):
                raise InvalidAnswer("a message's tool_calls is not a list")
        elif kind == COMPLETION and not isinstance(item.get("text"), str):
            raise InvalidAnswer("a choice has no text")


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

    def feed(self, event: str | None, data: dict[str, Any]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def usage_chunk(self, usage: Usage | None = None) -> dict[str, Any]:
        """OpenAI's final usage chunk (empty `choices`), from `usage` or else `self.usage`.

        Pass `usage` to send counts the proxy estimated itself; with neither, counts are zero.
        """
        return usage_chunk(self.chunk_id, self.created, self.model, usage or self.usage or Usage())


class Provider:
    """Base class of the provider adapters."""

    name: str = ""
    # True when the upstream streams OpenAI chunks already, so the proxy can relay raw bytes.
    openai_native_stream: bool = True

    def build(self, kind: str, body: dict[str, Any], deployment: DeploymentInfo) -> UpstreamRequest:
        raise NotImplementedError

    def parse(self, kind: str, data: dict[str, Any], deployment: DeploymentInfo) -> dict[str, Any]:
        """Upstream JSON answer -> OpenAI-shaped JSON answer (the client-facing model name)."""
        raise NotImplementedError

    def usage(
        self, kind: str, openai_data: dict[str, Any], upstream_data: dict[str, Any] | None = None
    ) -> Usage | None:
        """Usage of an answer; None when it carries none.

        Read from the OpenAI-shaped answer (`parse`'s result); an adapter whose translation
        cannot carry unbelievable counts reads them from `upstream_data` instead.
        """
        raw = openai_data.get("usage")
        return Usage.from_openai(raw) if raw else None

    def stream_translator(self, deployment: DeploymentInfo) -> StreamTranslator:
        raise NotImplementedError

    def error_message(self, data: dict[str, Any]) -> str:
        """The human-readable message of an upstream error answer (OpenAI's shape here)."""
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict):
            return str(error.get("message") or error.get("type") or "upstream error")
        if isinstance(error, str) and error:
            return error
        return str((data or {}).get("message") or "upstream error")
