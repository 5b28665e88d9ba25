"""A hostile upstream for tests: a real aiohttp server on 127.0.0.1 that answers with garbage.

What it sends is chosen by the upstream model name in the request body (every provider
adapter puts `deployment.upstream_model` there), and the dialect by the path: `/messages`
answers like Anthropic, `/embeddings` and `/rerank` like those APIs, anything else like
OpenAI's chat or legacy completions (Azure's deployment paths included).

    base_url, stop = start_hostile_upstream()   # http://127.0.0.1:PORT
    ...                                         # deployments with base_url=f"{base_url}/v1"
    stop()

Broken bodies (the same bytes for a stream and a whole answer): BROKEN_BODIES.
Wrong JSON shapes of a whole answer: BAD_SHAPES. Unbelievable usage in an otherwise good
answer, whole or streamed: BAD_USAGE. `no-usage` answers well without any usage, `good`
answers well with true usage (GOOD_USAGE).
"""

import asyncio
import socket
import threading
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

GOOD_USAGE = {"prompt_tokens": 7, "completion_tokens": 3}
# `silent` waits this long before answering, past any deployment timeout a test sets.
SILENT_SECONDS = 5.0
ANSWER_TEXT = "red green blue"

BROKEN_BODIES: dict[str, tuple[str, bytes]] = {
    "html": ("text/html", b"<html><body><h1>502 Bad Gateway</h1>nginx</body></html>"),
    "truncated": ("application/json", b'{"id": "chatcmpl-1", "object": "chat.completion", "cho'),
    "broken-sse": (
        "text/event-stream",
        b'data: {"id": "chatcmpl-1", "choices": [{"delta": {"cont\n\n'
        b"this is not an event stream line\n\n"
        b"data: <<<>>>\n\n",
    ),
    "json-error": (
        "application/json",
        b'{"error": {"message": "model overloaded", "type": "server_error", "code": null}}',
    ),
    "empty": ("application/json", b""),
}

# Streams that start well and break: garbage, or an error event, after the first chunk.
STREAM_BREAKS: dict[str, bytes] = {
    "mid-garbage": b'data: {"id": "chatcmpl-1", "choi\n\n',
    "mid-error": b'data: {"error": {"message": "model overloaded", "type": "server_error"}}\n\n',
}

BAD_SHAPES: dict[str, Any] = {
    "shape-list": [],
    "shape-string": "hello",
    "shape-null": None,
    "shape-number": 42,
    "shape-no-choices": {"id": "chatcmpl-1", "object": "chat.completion"},
    "shape-choices-not-list": {"id": "chatcmpl-1", "choices": "red"},
    "shape-choice-not-dict": {"id": "chatcmpl-1", "choices": ["red"]},
    "shape-message-not-dict": {"id": "chatcmpl-1", "choices": [{"index": 0, "message": "red"}]},
    "shape-content-not-text": {
        "id": "chatcmpl-1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": {"text": 1}}}],
    },
}

BAD_USAGE: dict[str, Any] = {
    "usage-negative": {"prompt_tokens": -50, "completion_tokens": -7},
    "usage-string": {"prompt_tokens": "seven", "completion_tokens": "three"},
    "usage-float": {"prompt_tokens": 7.5, "completion_tokens": 3.25},
    "usage-bool": {"prompt_tokens": True, "completion_tokens": False},
    "usage-null": {"prompt_tokens": None, "completion_tokens": None},
    "usage-nested": {"prompt_tokens": {"value": 7}, "completion_tokens": [3]},
    "usage-huge": {"prompt_tokens": 10**12, "completion_tokens": 10**12},
    "usage-not-an-object": "plenty",
}


def _openai_usage(counts: Any) -> Any:
    return {**counts, "total_tokens": 10} if isinstance(counts, dict) else counts


def _anthropic_usage(counts: Any, part: str = "both") -> Any:
    """Anthropic's usage object; `part` "input" for message_start, "output" for message_delta."""
    if not isinstance(counts, dict):
        return counts
    usage = {"input_tokens": counts["prompt_tokens"], "output_tokens": counts["completion_tokens"]}
    if part == "input":
        usage["output_tokens"] = 1
    elif part == "output":
        del usage["input_tokens"]
    return usage


def _usage_for(model: str) -> Any:
    if model == "good":
        return GOOD_USAGE
    return BAD_USAGE.get(model)


def _sse(value: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(value) + b"\n\n"


def _openai_answer(path: str, usage: dict | None) -> dict:
    if path.endswith("/embeddings"):
        answer: dict = {"object": "list", "data": [{"index": 0, "embedding": [0.1, 0.2]}]}
    elif path.endswith("/rerank"):
        answer = {"id": "rr-1", "results": [{"index": 0, "relevance_score": 0.9}]}
    elif path.endswith("/completions") and not path.endswith("/chat/completions"):
        answer = {"id": "cmpl-1", "object": "text_completion", "choices": [{"text": ANSWER_TEXT}]}
    else:
        answer = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "hostile",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": ANSWER_TEXT},
                    "finish_reason": "stop",
                }
            ],
        }
    if usage is not None:
        answer["usage"] = _openai_usage(usage)
    return answer


def _openai_chunk(path: str, text: str | None, usage: dict | None = None) -> bytes:
    if text is None:
        choices: list = []
    elif path.endswith("/chat/completions"):
        choices = [{"index": 0, "delta": {"content": text}, "finish_reason": None}]
    else:
        choices = [{"index": 0, "text": text, "finish_reason": None}]
    chunk: dict = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1}
    chunk.update(model="hostile", choices=choices)
    if usage is not None:
        chunk["usage"] = _openai_usage(usage)
    return _sse(chunk)


def _openai_stream(path: str, usage: dict | None, broken: bytes | None = None) -> bytes:
    words = ANSWER_TEXT.split(" ")
    if broken is not None:
        return _openai_chunk(path, words[0] + " ") + broken
    body = b"".join(_openai_chunk(path, word + " ") for word in words)
    if usage is not None:
        body += _openai_chunk(path, None, usage)
    return body + b"data: [DONE]\n\n"


def _anthropic_answer(usage: dict | None) -> dict:
    answer: dict = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "hostile",
        "content": [{"type": "text", "text": ANSWER_TEXT}],
        "stop_reason": "end_turn",
    }
    if usage is not None:
        answer["usage"] = _anthropic_usage(usage)
    return answer


def _anthropic_text(text: str) -> bytes:
    delta = {"type": "text_delta", "text": text}
    return _sse({"type": "content_block_delta", "index": 0, "delta": delta}, "content_block_delta")


def _anthropic_stream(usage: dict | None, broken: bytes | None = None) -> bytes:
    message: dict = {"id": "msg_1", "type": "message", "role": "assistant", "content": []}
    if usage is not None:
        message["usage"] = _anthropic_usage(usage, "input")
    body = _sse({"type": "message_start", "message": message}, "message_start")
    block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}
    body += _sse(block, "content_block_start")
    words = ANSWER_TEXT.split(" ")
    if broken is not None:
        return body + _anthropic_text(words[0] + " ") + broken
    body += b"".join(_anthropic_text(word + " ") for word in words)
    body += _sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
    delta: dict = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}}
    if usage is not None:
        delta["usage"] = _anthropic_usage(usage, "output")
    body += _sse(delta, "message_delta")
    return body + _sse({"type": "message_stop"}, "message_stop")


async def _answer(request: web.Request) -> web.StreamResponse:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return web.json_response({"error": {"message": "bad json"}}, status=400)
    model = str(body.get("model") or "")
    stream = bool(body.get("stream"))
    path = request.path
    anthropic = path.endswith("/messages")
    if model == "silent":
        await asyncio.sleep(SILENT_SECONDS)
    if model in BROKEN_BODIES:
        content_type, raw = BROKEN_BODIES[model]
        return web.Response(body=raw, status=200, headers={"content-type": content_type})
    if model in BAD_SHAPES:
        return web.Response(body=orjson.dumps(BAD_SHAPES[model]), content_type="application/json")
    if model in STREAM_BREAKS:
        broken = STREAM_BREAKS[model]
        if anthropic and model == "mid-error":
            broken = b"event: error\n" + broken
        raw = _anthropic_stream(None, broken) if anthropic else _openai_stream(path, None, broken)
        return web.Response(body=raw, headers={"content-type": "text/event-stream"})
    usage = _usage_for(model)
    if usage is None and model not in ("no-usage", "silent"):
        return web.json_response({"error": {"message": f"unknown model {model}"}}, status=404)
    if stream:
        raw = _anthropic_stream(usage) if anthropic else _openai_stream(path, usage)
        return web.Response(body=raw, headers={"content-type": "text/event-stream"})
    answer = _anthropic_answer(usage) if anthropic else _openai_answer(path, usage)
    return web.Response(body=orjson.dumps(answer), content_type="application/json")


def start_hostile_upstream() -> tuple[str, Callable[[], None]]:
    """Start the server in a daemon thread; returns its base URL and a function stopping it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", _answer)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.SockSite(runner, sock).start())
        started.set()
        loop.run_forever()
        loop.close()

    thread = threading.Thread(target=serve, name=f"hostile-upstream-{port}", daemon=True)
    thread.start()
    if not started.wait(10):
        raise RuntimeError("the hostile upstream did not start")

    async def shut_down() -> None:
        await runner.cleanup()
        # Handlers still sleeping (`silent`, abandoned by a gateway timeout) end here too.
        pending = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def stop() -> None:
        asyncio.run_coroutine_threadsafe(shut_down(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        sock.close()

    return f"http://127.0.0.1:{port}", stop
