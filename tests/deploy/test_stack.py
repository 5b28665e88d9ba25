"""`make stack` (scripts/run_stack.py): every process of the Procfile comes up from local
binaries behind one port, Redis keeps its append-only file, and Ctrl-C stops it all."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.deploy.conftest import ROOT, haproxy_or_skip

pytestmark = [pytest.mark.slow, pytest.mark.services]


def three_free_ports() -> int:
    """A port whose next two are free as well (the stack puts its instances there)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        try:
            for offset in (1, 2):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port + offset))
        except OSError:
            continue
        return port
    raise RuntimeError("no three free ports in a row")


def test_make_stack_serves_through_the_balancer_and_stops_cleanly():
    haproxy_or_skip()
    var = Path(tempfile.mkdtemp(prefix="stack-"))
    os.chmod(var, 0o755)  # noqa: S103  (PostgreSQL runs as the postgres user when root)
    port = three_free_ports()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    log_path = var / "launcher.log"
    with log_path.open("wb") as log:
        launcher = subprocess.Popen(
            [sys.executable, "scripts/run_stack.py", "--port", str(port), "--var-dir", str(var),
             "--no-seed", "--workers", "1"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 150
        while b"Stack up" not in log_path.read_bytes():
            assert launcher.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)
        lb = f"http://127.0.0.1:{port}"
        ready = httpx.get(f"{lb}/readyz", headers={"Host": "localhost"}, timeout=10)
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"database": "ok", "redis": "ok", "usage": "ok"}
        # Both instances answer directly too, and every Procfile process is running.
        for instance in (port + 1, port + 2):
            assert httpx.get(f"http://127.0.0.1:{instance}/healthz", timeout=10).status_code == 200
        logs = {path.stem for path in (var / "stack" / "log").glob("*.log")}
        assert logs == {"db", "redis", "release", "web1", "web2", "worker", "beat", "lb"}
        beat_log = var / "stack" / "log" / "beat.log"
        while "lease taken" not in beat_log.read_text():  # the one beat holds the lock
            assert time.monotonic() < deadline, beat_log.read_text()[-3000:]
            time.sleep(0.5)
        # Redis persists to its append-only file in the stack's directory.
        redis_dir = var / "stack" / "redis"
        assert any(redis_dir.rglob("*.aof")), list(redis_dir.iterdir())

        launcher.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert launcher.wait(120) == 0, log_path.read_text()[-3000:]
    finally:
        if launcher.poll() is None:  # a failed assertion: still stop every process
            launcher.send_signal(signal.SIGINT)
            try:
                launcher.wait(120)
            except subprocess.TimeoutExpired:
                launcher.kill()
                launcher.wait()
    for open_port in (port, port + 1, port + 2):
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{open_port}/healthz", timeout=2)
    stopped = {
        name: (var / "stack" / "log" / f"{name}.log").read_text() for name in ("db", "redis")
    }
    assert "database system is shut down" in stopped["db"]
    assert "ready to exit" in stopped["redis"]
