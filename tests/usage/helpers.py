"""Helpers for usage-capture tests: events, waiting, subprocess writers, a cuttable TCP relay."""

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

from django.db import connection

from apps.usage.event import UsageEvent

ROOT = Path(__file__).resolve().parents[2]


def make_event(**overrides) -> UsageEvent:
    fields = {
        "model": "demo-chat",
        "request_type": "chat",
        "status_code": 200,
        "api_key_id": 7,
        "team_id": 3,
        "input_tokens": 120,
        "output_tokens": 30,
        "cost_usd": Decimal("0.0000360000"),
        "tags": {"feature": "search"},
    }
    fields.update(overrides)
    return UsageEvent(**fields)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], bool], timeout: float = 8.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


async def await_for(predicate, timeout: float = 8.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(step)
    return await predicate()


def database_url(host: str | None = None, port: int | str | None = None) -> str:
    conf = connection.settings_dict
    return f"postgres://{conf['USER']}@{host or conf['HOST']}:{port or conf['PORT']}/{conf['NAME']}"


def writer_process(
    *, stream: str, consumer: str, db_url: str, spool_dir: Path, flush_interval: float = 0.1
) -> subprocess.Popen:
    env = {**os.environ, "DATABASE_URL": db_url, "DEBUG": "true", "LOG_LEVEL": "WARNING"}
    return subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "usage_writer",
            "--stream",
            stream,
            "--consumer",
            consumer,
            "--spool-dir",
            str(spool_dir),
            "--flush-interval",
            str(flush_interval),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


class TcpProxy:
    """A TCP relay to PostgreSQL that can be cut: a real outage seen by the client."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up.is_set():
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        self.up.clear()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def restore(self) -> None:
        self.up.set()

    def close(self) -> None:
        self.cut()
        self.listener.close()
