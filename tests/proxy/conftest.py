"""A real gateway server (uvicorn, the project's ASGI app) for end-to-end proxy tests.

The server runs in its own process against the test database; its upstream is the built-in
simulator mounted on the same server at /simulator/v1 (a real HTTP hop).
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]

# Upstream behaviours by upstream model name, for failover and error tests.
SIMULATOR_MODEL_KNOBS = {
    "always-500": {"error_rate": 1.0, "error_status": 500},
    "always-429": {"error_rate": 1.0, "error_status": 429},
    "slow-chat": {"latency_ms": 3000, "ttft_ms": 3000},
    "slow-stream": {"tokens_per_second": 40, "output_tokens": 400},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_database_url() -> str:
    conf = connection.settings_dict
    if conf["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{conf['NAME']}"
    return f"postgres://{conf['USER']}@{conf['HOST']}:{conf['PORT']}/{conf['NAME']}"


@dataclass
class GatewayServer:
    url: str
    process: subprocess.Popen
    env: dict
    log_path: Path
    workers: int = 1

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def simulator_url(self) -> str:
        return f"{self.url}/simulator/v1"

    def wait_for_model(self, api_key: str, model: str, timeout: float = 10.0) -> None:
        """Block until the server's catalog (refreshed in the background) serves `model`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = httpx.get(
                f"{self.url}/v1/models", headers={"Authorization": f"Bearer {api_key}"}, timeout=5
            )
            if response.status_code == 200 and any(
                m["id"] == model for m in response.json()["data"]
            ):
                if self.workers > 1:
                    # One worker has it; give the others a few catalog refreshes too.
                    time.sleep(1.0)
                return
            time.sleep(0.1)
        raise AssertionError(f"gateway never served model {model!r}")


def gateway_env(port: int, extra_env: dict | None = None) -> dict:
    """A test gateway's environment: the test database, quick refreshes, the simulator's
    knobs; `extra_env` wins."""
    return {
        **os.environ,
        "DEBUG": "true",
        "DATABASE_URL": test_database_url(),
        "PORT": str(port),
        "CATALOG_REFRESH_SECONDS": "0.2",
        "USAGE_FLUSH_INTERVAL": "0.2",
        "KEY_CACHE_TTL": "1",
        "SIMULATOR_MODEL_KNOBS": json.dumps(SIMULATOR_MODEL_KNOBS),
        "PROXY_RETRY_BACKOFF": "0.01",
        "QUOTA_REFRESH_SECONDS": "0.2",
        # An upstream key deployments may name in api_key_env (the TOLLGATE_UPSTREAM_ prefix).
        "TOLLGATE_UPSTREAM_TEST_KEY": "sk-test-upstream",
        **(extra_env or {}),
    }


def wait_healthy(server: GatewayServer, timeout: float, stop: Callable[[], None]) -> None:
    """Until the server answers /healthz; if it exits or times out first, `stop` it and fail."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if server.process.poll() is not None or time.monotonic() > deadline:
            stop()
            raise RuntimeError(f"gateway did not start: {server.log()[-3000:]}")
        time.sleep(0.1)


def start_gateway(extra_env: dict | None = None, workers: int = 1) -> GatewayServer:
    port = free_port()
    env = gateway_env(port, extra_env)
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "gateway_portal.asgi:application",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--loop",
        "uvloop",
        "--http",
        "httptools",
    ]
    if workers > 1:
        command += ["--workers", str(workers)]
    log_path = Path(tempfile.mkstemp(prefix="gateway-", suffix=".log")[1])
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log_path.open("wb")
    )
    url = f"http://127.0.0.1:{port}"
    server = GatewayServer(url=url, process=process, env=env, log_path=log_path, workers=workers)
    wait_healthy(server, 40, stop=process.kill)
    return server


def stop_gateway(server: GatewayServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(15)
    except subprocess.TimeoutExpired:
        server.process.kill()
    # Rows still in the shared usage stream would be written by the next test's writers,
    # after that test's database flush; start every test from an empty stream.
    if os.environ.get("REDIS_URL"):
        import redis
        from django.conf import settings

        redis.Redis.from_url(os.environ["REDIS_URL"]).delete(settings.USAGE_STREAM)


def purge_usage_rows() -> None:
    from apps.usage.models import UsageRecord

    UsageRecord.objects.all().delete()


@pytest.fixture(scope="module")
def gateway(django_db_setup, django_db_blocker) -> Iterator[GatewayServer]:
    server = start_gateway()
    yield server
    stop_gateway(server)
    # Its shutdown drain may have written rows after the last test's flush.
    with django_db_blocker.unblock():
        purge_usage_rows()
