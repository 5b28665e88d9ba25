"""The OpenAPI description of the /v1 gateway endpoints, merged into /api/docs.

The /v1 app is plain ASGI in front of Django (see `app.py`), so django-ninja cannot see
it; its paths are described here by hand, from the same endpoint table the app routes by,
so a path added there and not here fails `tests/proxy/test_openapi.py`.
"""

from __future__ import annotations

from typing import Any

METADATA_HEADER = {
    "name": "X-Gateway-Metadata",
    "in": "header",
    "required": False,
    "description": (
        "A JSON object of string tags (at most 32 keys; keys up to 64 characters, values up "
        "to 256; the header up to 8 KiB), merged over the team's, virtual account's and key's "
        'default tags and recorded with the call. `log_request: "true"` logs the bodies '
        "when the team allows it. A malformed header is a 400."
    ),
    "schema": {"type": "string", "example": '{"customer_id": "acme", "feature": "search"}'},
}

OPENAI_ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string", "example": "invalid_request_error"},
                "param": {"type": "string", "nullable": True},
                "code": {"type": "string", "nullable": True, "example": "model_not_found"},
            },
        }
    },
}
BROKEN_RULES = {
    "type": "array",
    "description": "Every quota rule the call would break, by id.",
    "items": {
        "type": "object",
        "properties": {
            "rule": {"type": "string", "example": "frontend-monthly"},
            "subject": {"type": "string", "example": "team:frontend"},
            "unit": {"type": "string", "example": "tokens_per_month"},
            "limit": {"type": "number"},
            "used": {"type": "number"},
            "requested": {"type": "number"},
            "reset": {"type": "string", "format": "date-time"},
            "per": {"type": "object", "description": "The group of a per-value rule."},
        },
    },
}
QUOTA_ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "allOf": [
                OPENAI_ERROR["properties"]["error"],
                {
                    "type": "object",
                    "properties": {
                        "code": {"type": "string", "example": "quota_exceeded"},
                        "broken_rules": BROKEN_RULES,
                    },
                },
            ]
        }
    },
}
ANTHROPIC_ERROR = {
    "type": "object",
    "required": ["type", "error"],
    "properties": {
        "type": {"type": "string", "enum": ["error"]},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {
                "type": {"type": "string", "example": "rate_limit_error"},
                "message": {"type": "string"},
                "code": {"type": "string", "example": "quota_exceeded"},
                "broken_rules": BROKEN_RULES,
            },
        },
    },
}

ANSWER_HEADERS = {
    "x-request-id": {
        "description": "The call's id in the usage ledger.",
        "schema": {"type": "string"},
    },
    "x-gateway-cost-usd": {
        "description": "What the ledger records the call cost (whole answers only).",
        "schema": {"type": "string", "example": "0.0001234"},
    },
    "x-gateway-overhead-ms": {
        "description": "The gateway's own time: the call's latency less the upstream's.",
        "schema": {"type": "string", "example": "0.850"},
    },
}


def _errors(shape: dict[str, Any], quota: dict[str, Any]) -> dict[str, Any]:
    def answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    return {
        "400": answer("The body, a parameter or the metadata header is invalid.", shape),
        "401": answer("No valid API key (missing, unknown, revoked, expired).", shape),
        "403": answer("The key may not use this model.", shape),
        "404": answer("The model is not served here.", shape),
        "413": answer("The body is larger than PROXY_MAX_BODY_BYTES.", shape),
        "415": answer("The body is not declared as JSON.", shape),
        "429": answer("A quota rule refuses the call; `broken_rules` names each one.", quota),
        "502": answer("The upstream failed or answered something invalid.", shape),
        "503": answer("No deployment can take the call now.", shape),
        "504": answer("The upstream timed out (or sent no first token in time).", shape),
    }


def _body(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    schema = {
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": True,
    }
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _call(
    summary: str, description: str, body: dict[str, Any], *, anthropic: bool = False
) -> dict[str, Any]:
    shape = ANTHROPIC_ERROR if anthropic else OPENAI_ERROR
    ok = {
        "description": "The answer (JSON, or `text/event-stream` when `stream` is true).",
        "headers": ANSWER_HEADERS,
        "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {}},
    }
    return {
        "post": {
            "tags": ["gateway"],
            "summary": summary,
            "description": description,
            "parameters": [METADATA_HEADER],
            "requestBody": body,
            "responses": {
                "200": ok,
                **_errors(shape, ANTHROPIC_ERROR if anthropic else QUOTA_ERROR),
            },
            "security": [{"bearer": []}, {"x-api-key": []}],
        }
    }


MODEL = {"type": "string", "description": "A model name of the gateway's catalog."}
STREAM = {"type": "boolean", "default": False}

PATHS: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": _call(
        "Chat completions (OpenAI)",
        "OpenAI's chat completions, streamed with `stream: true`; usage comes in a last chunk "
        "when `stream_options.include_usage` is true.",
        _body(
            ["model", "messages"], {"model": MODEL, "messages": {"type": "array"}, "stream": STREAM}
        ),
    ),
    "/v1/completions": _call(
        "Completions (OpenAI, legacy)",
        "OpenAI's legacy text completions.",
        _body(["model", "prompt"], {"model": MODEL, "prompt": {}, "stream": STREAM}),
    ),
    "/v1/embeddings": _call(
        "Embeddings (OpenAI)",
        "OpenAI's embeddings.",
        _body(["model", "input"], {"model": MODEL, "input": {}}),
    ),
    "/v1/rerank": _call(
        "Rerank",
        "Cohere-style rerank: a query and documents, answered with relevance scores.",
        _body(
            ["model", "query", "documents"],
            {"model": MODEL, "query": {"type": "string"}, "documents": {"type": "array"}},
        ),
    ),
    "/v1/responses": _call(
        "Responses (OpenAI)",
        "OpenAI's Responses API. Passed through to deployments that speak it; translated to "
        "chat completions for the rest, where `previous_response_id` and `store: true` are "
        "a 400.",
        _body(
            ["model", "input"],
            {"model": MODEL, "input": {}, "instructions": {"type": "string"}, "stream": STREAM},
        ),
    ),
    "/v1/messages": _call(
        "Messages (Anthropic)",
        "Anthropic's Messages API, with Anthropic's error shape. `anthropic-version` and "
        "`anthropic-beta` are passed through to Anthropic deployments.",
        _body(
            ["model", "max_tokens", "messages"],
            {
                "model": MODEL,
                "max_tokens": {"type": "integer", "minimum": 1},
                "messages": {"type": "array"},
                "stream": STREAM,
            },
        ),
        anthropic=True,
    ),
    "/v1/messages/count_tokens": _call(
        "Count tokens (Anthropic)",
        "The gateway's estimate of a Messages request's input tokens: no upstream call, no "
        'usage row. Answers `{"input_tokens": N}`.',
        _body(["model", "messages"], {"model": MODEL, "messages": {"type": "array"}}),
        anthropic=True,
    ),
    "/v1/models": {
        "get": {
            "tags": ["gateway"],
            "summary": "Models the key may use (OpenAI's list shape)",
            "responses": {
                "200": {"description": '`{"object": "list", "data": [...]}`'},
                **{k: v for k, v in _errors(OPENAI_ERROR, QUOTA_ERROR).items() if k == "401"},
            },
            "security": [{"bearer": []}, {"x-api-key": []}],
        }
    },
    "/v1/models/{model}": {
        "get": {
            "tags": ["gateway"],
            "summary": "One model",
            "parameters": [
                {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {
                "200": {"description": "A model object."},
                **{
                    k: v
                    for k, v in _errors(OPENAI_ERROR, QUOTA_ERROR).items()
                    if k in ("401", "404")
                },
            },
            "security": [{"bearer": []}, {"x-api-key": []}],
        }
    },
}

SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "A gateway key (`tg_live_...`), as `Authorization: Bearer <key>`.",
    },
    "x-api-key": {"type": "apiKey", "in": "header", "name": "x-api-key"},
}


def add_gateway_paths(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` (django-ninja's) with the /v1 paths and their security schemes."""
    schema.setdefault("paths", {}).update(PATHS)
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
    return schema
