"""Shape checks of client request bodies, so bad input gets a 400 naming the field."""

from .errors import BadRequest
from .providers.base import CHAT, COMPLETION, EMBEDDING, RERANK


def _is(value: object, types: type | tuple) -> bool:
    allowed = types if isinstance(types, tuple) else (types,)
    # bool is an int in Python, but `"max_tokens": true` is not a number in JSON.
    if isinstance(value, bool):
        return bool in allowed
    return isinstance(value, allowed)


def _require(body: dict, field: str, types: type | tuple, what: str) -> object:
    if body.get(field) is None:
        raise BadRequest(
            f"'{field}' is a required property", param=field, code="missing_required_parameter"
        )
    value = body[field]
    if not _is(value, types):
        raise BadRequest(f"'{field}' must be {what}", param=field, code="invalid_type")
    return value


def _optional(body: dict, field: str, types: type | tuple, what: str) -> None:
    value = body.get(field)
    if value is not None and not _is(value, types):
        raise BadRequest(f"'{field}' must be {what}", param=field, code="invalid_type")


def validate_body(kind: str, body: object) -> dict:
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.", code="invalid_body")
    model = _require(body, "model", str, "a string")
    if not model:
        raise BadRequest("'model' must not be empty", param="model", code="invalid_value")
    _optional(body, "stream", bool, "a boolean")
    _optional(body, "user", str, "a string")
    if kind in (CHAT, COMPLETION):
        _optional(body, "max_tokens", int, "an integer")
        _optional(body, "max_completion_tokens", int, "an integer")
        _optional(body, "stream_options", dict, "an object")
        _optional(body, "temperature", (int, float), "a number")
    if kind == CHAT:
        messages = _require(body, "messages", list, "an array of messages")
        if not messages:
            raise BadRequest(
                "'messages' must contain at least one message",
                param="messages",
                code="invalid_value",
            )
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise BadRequest(
                    f"'messages[{index}]' must be an object with a string 'role'",
                    param=f"messages[{index}]",
                    code="invalid_type",
                )
    elif kind == COMPLETION:
        _require(body, "prompt", (str, list), "a string or an array of strings")
    elif kind == EMBEDDING:
        value = _require(body, "input", (str, list), "a string or an array")
        if isinstance(value, list) and not value:
            raise BadRequest("'input' must not be empty", param="input", code="invalid_value")
        _optional(body, "encoding_format", str, "'float' or 'base64'")
        if body.get("encoding_format") not in (None, "float", "base64"):
            raise BadRequest(
                "'encoding_format' must be 'float' or 'base64'",
                param="encoding_format",
                code="invalid_value",
            )
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
        _optional(body, "top_n", int, "an integer")
    return body
