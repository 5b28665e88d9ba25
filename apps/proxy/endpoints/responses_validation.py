"""Checks of OpenAI Responses requests before anything goes upstream (OpenAI's wording)."""

from __future__ import annotations

from typing import Any

from ..errors import BadRequest

ROLES = frozenset({"user", "assistant", "system", "developer"})
PART_TYPES = frozenset({"input_text", "input_image", "input_file", "output_text", "refusal"})
TOOL_CHOICES = frozenset({"auto", "none", "required"})


def _invalid(param: str, message: str, code: str = "invalid_value") -> BadRequest:
    return BadRequest(message, param=param, code=code)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _message_item(path: str, item: dict[str, Any]) -> None:
    if item.get("role") not in ROLES:
        raise _invalid(f"{path}.role", f"Invalid value for '{path}.role': {item.get('role')!r}.")
    content = item.get("content")
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _invalid(f"{path}.content", f"'{path}.content' must be a string or an array.")
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in PART_TYPES:
            raise _invalid(
                f"{path}.content[{index}].type",
                f"Invalid value for '{path}.content[{index}].type': {kind!r}.",
            )
        if kind in ("input_text", "output_text") and not isinstance(part.get("text"), str):
            raise _invalid(f"{path}.content[{index}].text", "Missing required parameter.")


def _item(index: int, item: object) -> None:
    path = f"input[{index}]"
    if not isinstance(item, dict):
        raise _invalid(path, f"'{path}' must be an object.", "invalid_type")
    kind = item.get("type", "message")
    if kind == "message":
        _message_item(path, item)
    elif kind == "function_call":
        for name in ("call_id", "name", "arguments"):
            if not isinstance(item.get(name), str):
                raise _invalid(f"{path}.{name}", f"Missing required parameter: '{path}.{name}'.")
    elif kind == "function_call_output":
        if not isinstance(item.get("call_id"), str):
            raise _invalid(f"{path}.call_id", f"Missing required parameter: '{path}.call_id'.")
        if not isinstance(item.get("output"), str | list):
            raise _invalid(f"{path}.output", f"Missing required parameter: '{path}.output'.")
    elif not isinstance(kind, str):
        raise _invalid(f"{path}.type", f"'{path}.type' must be a string.", "invalid_type")


def validate_responses(body: object) -> dict[str, Any]:
    """`body` if it is a valid Responses request, else BadRequest naming the field."""
    if type(body) is not dict:
        raise BadRequest("The request body must be a JSON object.", code="invalid_body")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid(
            "model", "Missing required parameter: 'model'.", "missing_required_parameter"
        )
    value = body.get("input")
    if isinstance(value, list):
        for index, item in enumerate(value):
            _item(index, item)
    elif not isinstance(value, str):
        raise _invalid("input", "'input' must be a string or an array of items.", "invalid_type")
    if body.get("instructions") is not None and not isinstance(body["instructions"], str):
        raise _invalid("instructions", "'instructions' must be a string.", "invalid_type")
    limit = body.get("max_output_tokens")
    if limit is not None and (not _is_int(limit) or limit < 1):
        raise _invalid("max_output_tokens", "'max_output_tokens' must be an integer of at least 1.")
    for name, high in (("temperature", 2), ("top_p", 1)):
        number = body.get(name)
        if number is not None and (not _is_number(number) or not 0 <= number <= high):
            raise _invalid(name, f"'{name}' must be a number between 0 and {high}.")
    for name in ("stream", "store", "parallel_tool_calls"):
        if body.get(name) is not None and not isinstance(body[name], bool):
            raise _invalid(name, f"'{name}' must be a boolean.", "invalid_type")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _invalid("tools", "'tools' must be an array.", "invalid_type")
        for index, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
                raise _invalid(f"tools[{index}].type", "Missing required parameter.")
            if tool["type"] == "function" and not isinstance(tool.get("name"), str):
                raise _invalid(f"tools[{index}].name", "Missing required parameter.")
    choice = body.get("tool_choice")
    if choice is not None and choice not in TOOL_CHOICES and not isinstance(choice, dict):
        raise _invalid("tool_choice", f"Invalid value for 'tool_choice': {choice!r}.")
    if body.get("metadata") is not None and not isinstance(body["metadata"], dict):
        raise _invalid("metadata", "'metadata' must be an object.", "invalid_type")
    return body
