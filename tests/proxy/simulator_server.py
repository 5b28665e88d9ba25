"""Run the upstream simulator over real HTTP for tests: a uvicorn server in a background
thread, on a free port of 127.0.0.1.

    base_url, stop = start_simulator()              # http://127.0.0.1:PORT
    client = OpenAI(base_url=f"{base_url}/v1", api_key="x")
    ...
    stop()

or `with running_simulator(required_key="k") as base_url: ...`. Keyword arguments go to
`create_app` (prefix, model_knobs, required_key, models), or pass a ready `app=`.
"""

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

from apps.proxy.simulator.app import create_app

STARTUP_TIMEOUT = 10.0


def start_simulator(app: Any = None, **create_app_kwargs: Any) -> tuple[str, Callable[[], None]]:
    """Start a simulator server; returns its base URL (no trailing slash, no prefix) and a
    function that stops it. The server thread is a daemon, so a forgotten stop cannot hang
    the test run.
    """
    if app is None:
        app = create_app(**create_app_kwargs)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        loop="asyncio",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)

    def serve() -> None:
        asyncio.run(server.serve(sockets=[sock]))

    thread = threading.Thread(target=serve, name=f"simulator-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    if not server.started:
        server.should_exit = True
        sock.close()
        raise RuntimeError("the simulator server did not start")

    def stop() -> None:
        server.should_exit = True
        thread.join(STARTUP_TIMEOUT)
        sock.close()

    return f"http://127.0.0.1:{port}", stop


@contextlib.contextmanager
def running_simulator(app: Any = None, **create_app_kwargs: Any) -> Iterator[str]:
    """`start_simulator` as a context manager yielding the base URL."""
    base_url, stop = start_simulator(app, **create_app_kwargs)
    try:
        yield base_url
    finally:
        stop()
