"""Real HTTP servers for the outbound guard's tests: a recording upstream and a redirector.

    with recording_server("127.0.0.2") as target:          # records every request it gets
        with recording_server("127.0.0.1", redirect_to=target.url) as upstream:
            ...  # POST {upstream.url}/r307/v1/chat/completions answers 307 to target

Paths starting `/r<status>/` answer that status with a Location on `redirect_to` (the rest
of the path kept); anything else answers 200 with a small OpenAI chat completion.
"""

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMPLETION = {
    "id": "chatcmpl-outbound",
    "object": "chat.completion",
    "created": 0,
    "model": "m",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class RecordingServer:
    url: str
    requests: list[Received] = field(default_factory=list)


@contextmanager
def recording_server(host: str = "127.0.0.1", redirect_to: str = "") -> Iterator[RecordingServer]:
    state = RecordingServer(url="")

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            state.requests.append(
                Received(
                    self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body
                )
            )
            first, _, rest = self.path.lstrip("/").partition("/")
            if first.startswith("r") and first[1:].isdigit():
                self.send_response(int(first[1:]))
                self.send_header("location", f"{redirect_to}/{rest}")
                self.send_header("content-length", "0")
                self.end_headers()
                return
            payload = json.dumps(COMPLETION).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _handle

        def log_message(self, *args) -> None:  # quiet test output
            pass

    server = ThreadingHTTPServer((host, 0), Handler)
    server.daemon_threads = True
    state.url = f"http://{host}:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
