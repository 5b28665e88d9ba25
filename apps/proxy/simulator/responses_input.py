"""Reading a Responses API request: its input items as chat-shaped messages, its function
tools and tool choice, and the checks OpenAI makes on them (answered with its 400s)."""

from collections.abc import Mapping
from typing import Any

from .openai_api import tool_mode
from .params import pick_tool
from .wire import ApiError

_ROLES = ("user", "assistant", "system", "developer")
_PART_TYPES = frozenset({"input_text", "input_image", "input_file", "output_text", "refusal"})


def conversation(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """`instructions` and `input` as chat messages (a system message, then one per item)."""
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise ApiError(400, "Invalid 'instructions': expected a string.", param="instructions")
    messages: list[dict[str, Any]] = (
        [{"role": "system", "content": instructions}] if instructions else []
    )
    raw = body.get("input")
    if raw is None:
        raise ApiError(400, "Missing required parameter: 'input'.", param="input")
    if isinstance(raw, str):
        return [*messages, {"role": "user", "content": raw}]
    if not isinstance(raw, list) or not raw:
        raise ApiError(
            400, "Invalid 'input': expected a string or a non-empty array of items.", param="input"
        )
    return messages + [_message(item, f"input[{index}]") for index, item in enumerate(raw)]


def _message(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, Mapping):
        raise ApiError(400, f"Invalid '{where}': expected an object.", param=where)
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if role not in _ROLES:
            raise ApiError(
                400,
                f"Invalid value: {role!r}. Supported values are: 'user', 'assistant', "
                "'system', and 'developer'.",
                param=f"{where}.role",
            )
        return {"role": role, "content": _content(item.get("content"), f"{where}.content")}
    if kind == "function_call":
        name, arguments, call_id = (
            _item_str(item, where, k) for k in ("name", "arguments", "call_id")
        )
        call = {
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }
        return {"role": "assistant", "content": None, "tool_calls": [call]}
    if kind == "function_call_output":
        call_id = _item_str(item, where, "call_id")
        output = item.get("output")
        return {
            "role": "tool",
            "tool_call_id": call_id,
            "content": _content(output, f"{where}.output"),
        }
    raise ApiError(
        400,
        f"Invalid value: {kind!r}. The simulator takes input items of type 'message', "
        "'function_call' and 'function_call_output'.",
        param=f"{where}.type",
    )


def _content(content: Any, where: str) -> Any:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ApiError(
            400, f"Invalid '{where}': expected a string or an array of content parts.", param=where
        )
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind not in _PART_TYPES:
            raise ApiError(
                400,
                f"Invalid value: {kind!r}. Supported values are: "
                + ", ".join(f"'{t}'" for t in sorted(_PART_TYPES))
                + ".",
                param=f"{where}[{index}].type",
            )
    return content


def _item_str(item: Mapping[str, Any], where: str, name: str) -> str:
    value = item.get(name)
    if not isinstance(value, str):
        raise ApiError(
            400, f"Missing required parameter: '{where}.{name}'.", param=f"{where}.{name}"
        )
    return value


def check_call_ids(raw: Any, known: frozenset[str]) -> frozenset[str]:
    """Every function_call_output answers a call made before it (in this input or an earlier
    turn), as OpenAI insists; returns the call ids known after this input."""
    ids = set(known)
    for item in raw if isinstance(raw, list) else ():
        kind = item.get("type")
        if kind == "function_call":
            ids.add(item["call_id"])
        elif kind == "function_call_output" and item["call_id"] not in ids:
            raise ApiError(
                400,
                f"No tool call found for function call output with call_id {item['call_id']}.",
                param="input",
            )
    return frozenset(ids)


def function_tools(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The function tools; other tool types (hosted tools) are accepted and never called."""
    tools = body.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise ApiError(400, "Invalid 'tools': expected an array.", param="tools")
    functions = []
    for index, tool in enumerate(tools):
        if not isinstance(tool, Mapping) or not isinstance(tool.get("type"), str):
            raise ApiError(
                400,
                f"Missing required parameter: 'tools[{index}].type'.",
                param=f"tools[{index}].type",
            )
        if tool["type"] == "function":
            if not isinstance(tool.get("name"), str) or not tool["name"]:
                raise ApiError(
                    400,
                    f"Missing required parameter: 'tools[{index}].name'.",
                    param=f"tools[{index}].name",
                )
            functions.append(tool)
    return functions


def pick_function(
    body: Mapping[str, Any], functions: list[Mapping[str, Any]], messages: list[dict[str, Any]]
) -> Mapping[str, Any] | None:
    choice = body.get("tool_choice")
    forced = None
    if isinstance(choice, Mapping):
        # {"type": "function", "name": ...}; other kinds (allowed_tools, hosted tools) leave
        # the choice to the model.
        mode = "named" if choice.get("type") == "function" else "auto"
        forced = choice.get("name")
    elif choice is None or choice in ("auto", "none", "required"):
        mode = tool_mode(choice)
    else:
        raise ApiError(
            400,
            f"Invalid value: {choice!r}. Supported values are: 'none', 'auto', and 'required'.",
            param="tool_choice",
        )
    try:
        return pick_tool(functions, mode, messages[-1], forced)
    except LookupError:
        raise ApiError(
            400,
            f"Tool choice 'function' with name '{forced}' not found in 'tools' parameter.",
            param="tool_choice",
        ) from None


def _check_number(body: Mapping[str, Any], name: str, high: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= high:
        raise ApiError(400, f"Invalid '{name}': expected a number from 0 to {high}.", param=name)


def check_settings(body: Mapping[str, Any]) -> None:
    """The sampling settings and metadata, which the simulator only echoes."""
    for name, high in (("temperature", 2), ("top_p", 1)):
        _check_number(body, name, high)
    if body.get("metadata") is not None and not isinstance(body["metadata"], Mapping):
        raise ApiError(400, "Invalid 'metadata': expected an object.", param="metadata")
