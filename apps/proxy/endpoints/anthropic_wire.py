"""Anthropic's wire shapes shared by the native and the translated Messages exchanges."""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import GatewayError
from ..providers.base import Usage
from ..tokens import estimate_text_tokens

# Anthropic's error `type` by status; 5xx are `api_error` (529 would be `overloaded_error`).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
}


def anthropic_error(error: GatewayError) -> dict[str, Any]:
    """`{"type": "error", "error": {...}}`, keeping the gateway's code and extra fields
    (the broken quota rules of a 429) beside Anthropic's two."""
    detail: dict[str, Any] = {
        "type": ERROR_TYPES.get(error.status, "api_error"),
        "message": error.message,
    }
    if error.code:
        detail["code"] = error.code
    detail.update(error.extra)
    return {"type": "error", "error": detail}


def anthropic_usage(usage: Usage) -> dict[str, Any]:
    """Anthropic's usage object: its `input_tokens` leave out the cache reads and writes."""
    fresh = max(usage.input_tokens - usage.cached_tokens - usage.cache_write_tokens, 0)
    return {
        "input_tokens": fresh,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
        "output_tokens": usage.output_tokens,
    }


def _block_text(block: object) -> str:
    if not isinstance(block, dict):
        return ""
    if block.get("type") == "text":
        return str(block.get("text") or "")
    if block.get("type") == "tool_use":
        return orjson.dumps(block.get("input") or {}).decode()
    if block.get("type") == "tool_result":
        content = block.get("content")
        if isinstance(content, str):
            return content
        parts = content if isinstance(content, list) else ()
        return " ".join(_block_text(part) for part in parts)
    return ""


def content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(text for text in map(_block_text, content) if text)
    return ""


def estimate_messages_input(body: dict[str, Any]) -> int:
    total = 3 + estimate_text_tokens(content_text(body.get("system")))
    for message in body.get("messages") or ():
        if isinstance(message, dict):
            total += 4 + estimate_text_tokens(content_text(message.get("content")))
    for tool in body.get("tools") or ():
        total += estimate_text_tokens(orjson.dumps(tool).decode())
    return total
