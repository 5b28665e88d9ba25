"""Checks of client requests before anything goes upstream, so bad input gets a 4xx naming
the field and costs no upstream call.

The rules follow OpenAI's API (roles, content part types, numeric ranges, the `code` and
`param` of its errors) closely enough that the official SDKs' conformance checks hold, without
being a full JSON schema: unknown fields pass through untouched, since providers add their own.
Optional parameters are checked by walking the body's own keys against a table, so a typical
request pays for the few fields it sends, not for every rule.
"""

from typing import Any, cast

from .errors import BadRequest
from .providers.base import CHAT, COMPLETION, EMBEDDING, RERANK


class UnsupportedMediaType(BadRequest):
    status = 415
    code = "unsupported_media_type"


# JSON is UTF-8 (RFC 8259); a body declared in another charset would be misread.
_JSON_CHARSETS = frozenset({b"utf-8", b"utf8", b"us-ascii"})
# What clients send nearly always, accepted without parsing the header.
_COMMON_JSON_TYPES = frozenset(
    {b"application/json", b"application/json; charset=utf-8", b"application/json;charset=utf-8"}
)


def check_content_type(value: bytes | None) -> None:
    """Accept `application/json` and `application/*+json`, with parameters; else a 415.

    A request without a Content-Type header is accepted and its body parsed as JSON (a parse
    failure is then the usual 400): the official SDKs always send `application/json`, and
    refusing hand-written clients that omit the header would buy nothing.
    """
    if value is None or value in _COMMON_JSON_TYPES:
        return
    media, _, params = value.partition(b";")
    media = media.strip().lower()
    if media != b"application/json" and not (
        media.startswith(b"application/") and media.endswith(b"+json")
    ):
        shown = value[:100].decode("latin-1")
        raise UnsupportedMediaType(
            f"Unsupported Content-Type '{shown}': send the body as 'application/json'.",
            param="Content-Type",
        )
    for param in params.split(b";"):
        name, _, charset = param.partition(b"=")
        if name.strip().lower() == b"charset":
            charset = charset.strip().strip(b'"').lower()
            if charset not in _JSON_CHARSETS:
                raise UnsupportedMediaType(
                    f"Unsupported charset '{charset[:40].decode('latin-1')}': JSON bodies "
                    "must be UTF-8.",
                    param="Content-Type",
                )


# --- errors, worded and coded like OpenAI's ---------------------------------------------------


def _type_error(param: str, what: str, value: object) -> BadRequest:
    return BadRequest(
        f"Invalid type for '{param}': expected {what}, but got {_json_type(value)} instead.",
        param=param,
        code="invalid_type",
    )


def _missing(param: str) -> BadRequest:
    return BadRequest(
        f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
    )


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _out_of_range(
    param: str, value: float, low: float | None, high: float | None, number: str
) -> None:
    # Codes as OpenAI names them, by the field's type (a number field is a "decimal" even when
    # sent as 3): integer_below_min_value, decimal_above_max_value, ...
    if low is not None and value < low:
        raise BadRequest(
            f"Invalid '{param}': {number} below minimum value. Expected a value >= {low}, "
            f"but got {value} instead.",
            param=param,
            code=f"{number}_below_min_value",
        )
    if high is not None and value > high:
        raise BadRequest(
            f"Invalid '{param}': {number} above maximum value. Expected a value <= {high}, "
            f"but got {value} instead.",
            param=param,
            code=f"{number}_above_max_value",
        )


# --- field checks: (param, value, *rule arguments) -> None, raising BadRequest -------------------


def _integer(param: str, value: object, low: int | None = None, high: int | None = None) -> None:
    # `type(...) is int`: JSON's true is not 1, and 1.5 (or 2.0) is not an integer to OpenAI.
    if type(value) is not int:
        raise _type_error(param, "an integer", value)
    _out_of_range(param, value, low, high, "integer")


def _number(param: str, value: object, low: float, high: float) -> None:
    if type(value) is not int and type(value) is not float:
        raise _type_error(param, "a number", value)
    _out_of_range(param, value, low, high, "decimal")


def _boolean(param: str, value: object) -> None:
    if type(value) is not bool:
        raise _type_error(param, "a boolean", value)


def _string(param: str, value: object) -> None:
    if type(value) is not str:
        raise _type_error(param, "a string", value)


def _required_string(param: str, value: object) -> None:
    if value is None:
        raise _missing(param)
    _string(param, value)


def _object(param: str, value: object) -> None:
    if type(value) is not dict:
        raise _type_error(param, "an object", value)


def _stop(param: str, value: object) -> None:
    if type(value) is str:
        return
    if type(value) is not list:
        raise _type_error(param, "a string or an array of strings", value)
    if len(value) > 4:
        raise BadRequest(
            f"Invalid '{param}': array too long. Expected an array with maximum length 4, but "
            f"got an array with length {len(value)} instead.",
            param=param,
            code="array_above_max_length",
        )
    for index, item in enumerate(value):
        if type(item) is not str:
            raise _type_error(f"{param}[{index}]", "a string", item)


def _encoding_format(param: str, value: object) -> None:
    if value not in ("float", "base64"):
        raise BadRequest(
            f"Invalid value for '{param}': expected 'float' or 'base64'.",
            param=param,
            code="invalid_value",
        )


# (check function, *its arguments after param and value), e.g. (_number, 0, 2).
Rule = tuple[Any, ...]

_COMMON: dict[str, Rule] = {"stream": (_boolean,), "user": (_string,)}
_SAMPLING: dict[str, Rule] = {
    **_COMMON,
    "max_tokens": (_integer, 1),
    "max_completion_tokens": (_integer, 1),
    "temperature": (_number, 0, 2),
    "top_p": (_number, 0, 1),
    "n": (_integer, 1, 128),
    "presence_penalty": (_number, -2, 2),
    "frequency_penalty": (_number, -2, 2),
    "seed": (_integer,),
    "stop": (_stop,),
    "stream_options": (_object,),
}
# Chat and legacy completions differ on `logprobs`: a flag in chat, a count in completions.
OPTIONAL_RULES: dict[str, dict[str, Rule]] = {
    CHAT: {**_SAMPLING, "logprobs": (_boolean,), "top_logprobs": (_integer, 0, 20)},
    COMPLETION: {**_SAMPLING, "logprobs": (_integer, 0, 5)},
    EMBEDDING: {**_COMMON, "dimensions": (_integer, 1), "encoding_format": (_encoding_format,)},
    RERANK: {**_COMMON, "top_n": (_integer, 1)},
}


# --- chat messages ----------------------------------------------------------------------------
# Param strings such as `messages[3].content[1].text` are built only once a check fails:
# formatting them for every valid message would cost more than the checks themselves.

_TEXT_ONLY = frozenset({"text"})
# Which content part types each role may send, as OpenAI accepts them.
PART_TYPES_BY_ROLE: dict[str, frozenset[str]] = {
    "system": _TEXT_ONLY,
    "developer": _TEXT_ONLY,
    "user": frozenset({"text", "image_url", "input_audio", "file"}),
    "assistant": frozenset({"text", "refusal"}),
    "tool": _TEXT_ONLY,
    "function": _TEXT_ONLY,
}
# Roles a message of only `role` and a string `content` may have (tool and function messages
# need more fields). A tuple, not a set: `in` on it compares, so an unhashable role (a list)
# just fails the test instead of raising TypeError.
_TEXT_ROLES = ("user", "system", "assistant", "developer")
_ROLES_LISTED = ", ".join(f"'{role}'" for role in PART_TYPES_BY_ROLE)
# The field each part type must carry, its type, and the strings required inside an object.
_PART_FIELDS: dict[str, tuple[str, type, tuple[str, ...]]] = {
    "text": ("text", str, ()),
    "refusal": ("refusal", str, ()),
    "image_url": ("image_url", dict, ("url",)),
    "input_audio": ("input_audio", dict, ("data", "format")),
    "file": ("file", dict, ()),
}


def _check_part(
    index: int, part_index: int, part: object, role: str, allowed: frozenset[str]
) -> None:
    """Raise the error of a content part its role may not send, naming the exact field."""
    if type(part) is not dict:
        raise _type_error(_part_param(index, part_index), "an object", part)
    part_type = part.get("type")
    if type(part_type) is not str:
        param = f"{_part_param(index, part_index)}.type"
        if part_type is None:
            raise _missing(param)
        raise _type_error(param, "a string", part_type)
    if part_type not in allowed:
        listed = ", ".join(f"'{name}'" for name in sorted(allowed))
        raise BadRequest(
            f"Invalid value: '{part_type[:64]}'. Supported values for a {role} message's "
            f"content parts are: {listed}.",
            param=f"{_part_param(index, part_index)}.type",
            code="invalid_value",
        )
    field, expected, inner = _PART_FIELDS[part_type]
    value: Any = part.get(field)
    if type(value) is not expected:
        param = f"{_part_param(index, part_index)}.{field}"
        if value is None:
            raise _missing(param)
        raise _type_error(param, "a string" if expected is str else "an object", value)
    # `inner` names fields only of the parts whose value is a dict, checked above.
    fields = cast(dict[str, Any], value)
    for name in inner:
        if type(fields.get(name)) is not str:
            param = f"{_part_param(index, part_index)}.{field}.{name}"
            _required_string(param, fields.get(name))


def _part_param(index: int, part_index: int) -> str:
    return f"messages[{index}].content[{part_index}]"


def _content(index: int, role: str, message: dict[str, Any], content: object) -> None:
    """Check a message's content that is not a plain string."""
    if content is None or content == []:
        # No content is fine where the message carries something else: an assistant's tool
        # or function call, or a function result (OpenAI allows null there).
        if role == "function" or (
            role == "assistant" and (message.get("tool_calls") or message.get("function_call"))
        ):
            return
        param = f"messages[{index}].content"
        if content is None:
            raise _missing(param)
        raise BadRequest(
            f"Invalid '{param}': empty array. Expected an array with minimum length 1.",
            param=param,
            code="empty_array",
        )
    if type(content) is not list:
        raise _type_error(
            f"messages[{index}].content", "a string or an array of content parts", content
        )
    allowed = PART_TYPES_BY_ROLE[role]
    for part_index, part in enumerate(content):
        # Text parts, the common case and allowed for every role, are settled inline.
        if type(part) is dict and part.get("type") == "text" and type(part.get("text")) is str:
            continue
        _check_part(index, part_index, part, role, allowed)


def _message(index: int, message: Any) -> None:
    role = message.get("role") if type(message) is dict else None
    if type(role) is not str:
        # The role decides every other rule, so a message without one is refused as a whole.
        param = f"messages[{index}]"
        raise BadRequest(
            f"'{param}' must be an object with a string 'role'", param=param, code="invalid_type"
        )
    if role not in PART_TYPES_BY_ROLE:
        raise BadRequest(
            f"Invalid value: '{role[:64]}'. Supported values are: {_ROLES_LISTED}.",
            param=f"messages[{index}].role",
            code="invalid_value",
        )
    content = message.get("content")
    if type(content) is not str:
        _content(index, role, message, content)
    name = message.get("name")
    if type(name) is not str and (name is not None or role == "function"):
        _required_string(f"messages[{index}].name", name)
    if role == "tool":
        tool_call_id = message.get("tool_call_id")
        if type(tool_call_id) is not str:
            _required_string(f"messages[{index}].tool_call_id", tool_call_id)
    elif role == "assistant":
        tool_calls = message.get("tool_calls")
        if tool_calls is not None:
            if type(tool_calls) is not list:
                raise _type_error(f"messages[{index}].tool_calls", "an array", tool_calls)
            for call_index, tool_call in enumerate(tool_calls):
                if type(tool_call) is not dict:
                    raise _type_error(
                        f"messages[{index}].tool_calls[{call_index}]", "an object", tool_call
                    )


# --- the body ---------------------------------------------------------------------------------


def _require(body: dict[str, Any], field: str, types: type | tuple[Any, ...], what: str) -> Any:
    value = body.get(field)
    if value is None:
        raise BadRequest(
            f"'{field}' is a required property", param=field, code="missing_required_parameter"
        )
    # bool is an int in Python, but `"input": true` is not a number in JSON.
    if isinstance(value, bool) or not isinstance(value, types):
        raise BadRequest(f"'{field}' must be {what}", param=field, code="invalid_type")
    return value


def validate_body(kind: str, body: object) -> dict[str, Any]:
    """`body` if it is a valid request of `kind`, else BadRequest naming the field."""
    if type(body) is not dict:
        raise BadRequest("The request body must be a JSON object.", code="invalid_body")
    model = _require(body, "model", str, "a string")
    if not model:
        raise BadRequest("'model' must not be empty", param="model", code="invalid_value")
    rules = OPTIONAL_RULES[kind]
    for field, value in body.items():
        rule = rules.get(field)
        if rule is not None and value is not None:
            rule[0](field, value, *rule[1:])
    if kind == CHAT:
        messages = _require(body, "messages", list, "an array of messages")
        if not messages:
            raise BadRequest(
                "'messages' must contain at least one message",
                param="messages",
                code="invalid_value",
            )
        for index, message in enumerate(messages):
            # Most messages are just a role and a string: settled here without a call.
            if (
                type(message) is dict
                and len(message) == 2
                and type(message.get("content")) is str
                and message.get("role") in _TEXT_ROLES
            ):
                continue
            _message(index, message)
    elif kind == COMPLETION:
        _require(body, "prompt", (str, list), "a string or an array of strings")
    elif kind == EMBEDDING:
        value = _require(body, "input", (str, list), "a string or an array")
        if isinstance(value, list):
            if not value:
                raise BadRequest("'input' must not be empty", param="input", code="invalid_value")
            for index, item in enumerate(value):
                # Strings, token ids, or arrays of token ids.
                if type(item) is not str and type(item) is not int and type(item) is not list:
                    raise _type_error(f"input[{index}]", "a string or an array of tokens", item)
    elif kind == RERANK:
        _require(body, "query", str, "a string")
        documents = _require(body, "documents", list, "an array of documents")
        for index, doc in enumerate(documents):
            if not isinstance(doc, str | dict):
                raise BadRequest(
                    f"'documents[{index}]' must be a string or an object",
                    param=f"documents[{index}]",
                    code="invalid_type",
                )
    return body
