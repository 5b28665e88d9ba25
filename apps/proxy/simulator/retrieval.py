"""Embeddings (`POST /v1/embeddings`) and rerank (`POST /v1/rerank`, Cohere/Jina shape)."""

import secrets
from collections.abc import Mapping
from typing import Any

from .content import count_tokens, embedding, rerank_scores
from .knobs import Knobs
from .params import non_stream_delay, optional_int, require_str
from .wire import ApiError, Request, Send, send_json

DEFAULT_DIMENSIONS = 256
MAX_DIMENSIONS = 8192


async def embeddings(req: Request, body: Mapping[str, Any], knobs: Knobs, send: Send) -> None:
    model = require_str(body, "model")
    raw = body.get("input")
    inputs = [raw] if isinstance(raw, str) else raw
    if not isinstance(inputs, list) or not inputs:
        raise ApiError(
            400, "'input' must be a string or a non-empty array of strings.", param="input"
        )
    if not all(isinstance(text, str) and text for text in inputs):
        raise ApiError(
            400,
            "'input' items must be non-empty strings (the simulator takes no token arrays).",
            param="input",
        )
    dimensions = optional_int(body, "dimensions") or DEFAULT_DIMENSIONS
    if dimensions > MAX_DIMENSIONS:
        raise ApiError(400, f"'dimensions' must be at most {MAX_DIMENSIONS}.", param="dimensions")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise ApiError(
            400, "'encoding_format' must be 'float' or 'base64'.", param="encoding_format"
        )
    slot = 1 if encoding == "base64" else 0
    data = [
        {"object": "embedding", "index": i, "embedding": embedding(text, dimensions)[slot]}
        for i, text in enumerate(inputs)
    ]
    tokens = sum(count_tokens(text) for text in inputs)
    await non_stream_delay(knobs)
    await send_json(
        send,
        200,
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        },
    )


async def rerank(req: Request, body: Mapping[str, Any], knobs: Knobs, send: Send) -> None:
    model = body.get("model") if isinstance(body.get("model"), str) else "sim-rerank"
    query = require_str(body, "query")
    documents = body.get("documents")
    if not isinstance(documents, list) or not documents:
        raise ApiError(400, "'documents' must be a non-empty array.", param="documents")
    texts = []
    for document in documents:
        if isinstance(document, Mapping) and isinstance(document.get("text"), str):
            texts.append(document["text"])
        elif isinstance(document, str):
            texts.append(document)
        else:
            raise ApiError(
                400, "'documents' items must be strings or {\"text\": ...}.", param="documents"
            )
    top_n = optional_int(body, "top_n", "top_k")
    return_documents = body.get("return_documents") is True
    scores = rerank_scores(query, texts)
    order = sorted(range(len(texts)), key=lambda i: (-scores[i], i))[: top_n or len(texts)]
    results = []
    for index in order:
        result: dict[str, Any] = {"index": index, "relevance_score": scores[index]}
        if return_documents:
            result["document"] = {"text": texts[index]}
        results.append(result)
    # Like Jina, every document is scored together with the query.
    tokens = sum(count_tokens(query) + count_tokens(text) for text in texts)
    await non_stream_delay(knobs)
    await send_json(
        send,
        200,
        {
            "id": "rerank-" + secrets.token_hex(12),
            "model": model,
            "results": results,
            "meta": {
                "api_version": {"version": "2"},
                # Cohere bills one search unit per query over up to 100 documents.
                "billed_units": {"search_units": (len(texts) + 99) // 100},
            },
            "usage": {"total_tokens": tokens, "prompt_tokens": tokens},
        },
    )
