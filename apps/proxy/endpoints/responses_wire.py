"""The Responses API's wire shapes shared by the native and the translated exchanges."""

from __future__ import annotations

from typing import Any

from ..errors import GatewayError
from ..providers.base import Usage
from .base import event_bytes


def error_event(error: GatewayError, sequence: int) -> bytes:
    """A stream's `error` event, as the Responses API sends one."""
    data = {
        "type": "error",
        "code": error.code,
        "message": error.message,
        "param": error.param,
        "sequence_number": sequence,
    }
    return event_bytes("error", data)


def usage_from_responses(raw: object) -> Usage:
    """Usage from a Responses `usage` object (its input count includes cached tokens)."""
    if not isinstance(raw, dict) or "input_tokens" not in raw:
        return Usage(suspect=True)
    details = raw.get("input_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage.from_counts(raw.get("input_tokens"), raw.get("output_tokens", 0), cached)


def responses_usage(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


def _part_text(part: object) -> str:
    if isinstance(part, dict) and isinstance(text := part.get("text"), str):
        return text
    return ""


def input_text(value: object) -> str:
    """The text of a Responses `input`: a string, or items' texts, calls and outputs."""
    if isinstance(value, str):
        return value
    texts: list[str] = []
    for item in value if isinstance(value, list) else ():
        if not isinstance(item, dict):
            continue
        content = item.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(_part_text(part) for part in content)
        for name in ("arguments", "output"):
            if isinstance(item.get(name), str):
                texts.append(item[name])
    return " ".join(texts)


def output_text(output: object) -> str:
    """The generated text of a response's `output` items, function arguments included."""
    return input_text(output)
