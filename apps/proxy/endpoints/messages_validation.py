"""Checks of Anthropic Messages requests before anything goes upstream.

Worded as Anthropic words them (`messages.0.content: ...`): the field path leads the
message, since Anthropic's error shape has no `param`. Unknown fields and block types pass
through untouched to native deployments, which know newer features than this gateway.
"""

from __future__ import annotations

from typing import Any, TypeGuard

from ..errors import BadRequest

ROLES = frozenset({"user", "assistant"})
TOOL_CHOICES = frozenset({"auto", "any", "tool", "none"})
IMAGE_SOURCES = frozenset({"base64", "url"})


def _error(path: str, message: str) -> BadRequest:
    return BadRequest(f"{path}: {message}", param=path, code="invalid_request")


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _text_blocks(path: str, value: object) -> None:
    """`system` and tool results: a string or a list of text blocks."""
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        raise _error(path, "Input should be a valid string or a list of text blocks")
    for index, block in enumerate(value):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise _error(f"{path}.{index}", "Input should be a content block object")
        if block["type"] == "text" and not isinstance(block.get("text"), str):
            raise _error(f"{path}.{index}.text", "Field required")


def _image(path: str, block: dict[str, Any]) -> None:
    source = block.get("source")
    if not isinstance(source, dict) or source.get("type") not in IMAGE_SOURCES:
        raise _error(f"{path}.source", "Input should be a base64 or url image source")
    if source["type"] == "base64":
        for name in ("media_type", "data"):
            if not isinstance(source.get(name), str) or not source[name]:
                raise _error(f"{path}.source.{name}", "Field required")
    elif not isinstance(source.get("url"), str):
        raise _error(f"{path}.source.url", "Field required")


def _block(path: str, role: str, block: object) -> None:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise _error(path, "Input should be a content block object with a 'type'")
    kind = block["type"]
    if kind == "text":
        if not isinstance(block.get("text"), str):
            raise _error(f"{path}.text", "Field required")
    elif kind == "image":
        _image(path, block)
    elif kind == "tool_use":
        if role != "assistant":
            raise _error(path, "tool_use blocks may only appear in assistant messages")
        if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
            raise _error(path, "tool_use blocks need an 'id' and a 'name'")
        if not isinstance(block.get("input"), dict):
            raise _error(f"{path}.input", "Input should be a valid dictionary")
    elif kind == "tool_result":
        if role != "user":
            raise _error(path, "tool_result blocks may only appear in user messages")
        if not isinstance(block.get("tool_use_id"), str):
            raise _error(f"{path}.tool_use_id", "Field required")
        if block.get("content") is not None:
            _tool_result_content(f"{path}.content", block["content"])


def _tool_result_content(path: str, value: object) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        raise _error(path, "Input should be a valid string or a list of content blocks")
    for index, block in enumerate(value):
        _block(f"{path}.{index}", "user", block)


def _message(index: int, message: object) -> None:
    path = f"messages.{index}"
    if not isinstance(message, dict):
        raise _error(path, "Input should be a valid dictionary")
    role = message.get("role")
    if role not in ROLES:
        raise _error(f"{path}.role", "Input should be 'user' or 'assistant'")
    content = message.get("content")
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _error(f"{path}.content", "Input should be a valid string or list of blocks")
    for part, block in enumerate(content):
        _block(f"{path}.content.{part}", role, block)


def _tools(tools: object) -> None:
    if not isinstance(tools, list):
        raise _error("tools", "Input should be a valid list")
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise _error(f"tools.{index}.name", "Field required")
        # Server tools (web search, bash...) carry a `type` and no schema.
        if "type" not in tool or tool["type"] == "custom":
            if not isinstance(tool.get("input_schema"), dict):
                raise _error(f"tools.{index}.input_schema", "Field required")


def validate_messages(body: object) -> dict[str, Any]:
    """`body` if it is a valid Messages request, else BadRequest naming the field."""
    if type(body) is not dict:
        raise BadRequest("The request body must be a JSON object.", code="invalid_body")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _error("model", "Field required")
    max_tokens = body.get("max_tokens")
    if not _is_int(max_tokens) or max_tokens < 1:
        raise _error("max_tokens", "Field required: an integer of at least 1")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _error("messages", "Field required: a non-empty list of messages")
    for index, message in enumerate(messages):
        _message(index, message)
    if body.get("system") is not None:
        _text_blocks("system", body["system"])
    stops = body.get("stop_sequences")
    if stops is not None and (
        not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)
    ):
        raise _error("stop_sequences", "Input should be a list of strings")
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and (not _is_number(value) or not 0 <= value <= 1):
            raise _error(name, "Input should be a number between 0 and 1")
    top_k = body.get("top_k")
    if top_k is not None and (not _is_int(top_k) or top_k < 0):
        raise _error("top_k", "Input should be a non-negative integer")
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise _error("stream", "Input should be a valid boolean")
    if body.get("tools") is not None:
        _tools(body["tools"])
    choice = body.get("tool_choice")
    if choice is not None and (
        not isinstance(choice, dict) or choice.get("type") not in TOOL_CHOICES
    ):
        raise _error("tool_choice", "Input should be an object of type auto, any, tool or none")
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise _error("metadata", "Input should be a valid dictionary")
        user_id = metadata.get("user_id")
        if user_id is not None and not isinstance(user_id, str):
            raise _error("metadata.user_id", "Input should be a valid string")
    return body


def validate_count_tokens(body: object) -> dict[str, Any]:
    """A count_tokens request: a Messages request without `max_tokens`."""
    if type(body) is dict and "max_tokens" not in body:
        validate_messages({**body, "max_tokens": 1})
        return body
    return validate_messages(body)
