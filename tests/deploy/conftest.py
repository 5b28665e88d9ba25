"""The production process list under test: gateway instances started from deploy/Procfile's
`web` line, HAProxy from its `lb` line with deploy/haproxy.cfg, a standalone simulator."""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.proxy.conftest import SIMULATOR_MODEL_KNOBS, GatewayServer, free_port, gateway_env
from tests.proxy.conftest import wait_healthy as proxy_wait_healthy

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from run_stack import ensure_haproxy, read_procfile  # noqa: E402  (scripts/ is not a package)

PROCFILE = read_procfile()
# `python`, `celery` in the Procfile are this virtualenv's.
PATH = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def procfile_command(name: str) -> list[str]:
    """The Procfile line as the stack runs it: one shell that becomes the process."""
    return ["sh", "-c", f"exec {PROCFILE[name]}"]


def start_instance(extra_env: dict | None = None, workers: int = 2) -> GatewayServer:
    server = spawn_instance(extra_env, workers)
    wait_healthy(server)
    return server


def spawn_instance(
    extra_env: dict | None = None, workers: int = 2, port: int | None = None
) -> GatewayServer:
    """One gateway instance from the Procfile's `web` line, in a process group of its own
    (so a test can SIGKILL the whole instance, supervisor and workers, at once). Not waited
    for: see `wait_healthy`."""
    port = port or free_port()
    metrics_dir = tempfile.mkdtemp(prefix="tollgate-prom-")
    env = gateway_env(
        port,
        {
            "PATH": PATH,
            "WEB_HOST": "127.0.0.1",
            "WEB_CONCURRENCY": str(workers),
            "DRAIN_SECONDS": "10",
            "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
            **(extra_env or {}),
        },
    )
    log_path = Path(tempfile.mkstemp(prefix="instance-", suffix=".log")[1])
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            procfile_command("web"), cwd=ROOT, env=env, stdout=log, stderr=log,
            start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    return GatewayServer(url=url, process=process, env=env, log_path=log_path, workers=workers)


def wait_healthy(server: GatewayServer, timeout: float = 60) -> None:
    proxy_wait_healthy(server, timeout, stop=lambda: kill_instance(server))


def kill_instance(server: GatewayServer, sig: int = signal.SIGKILL) -> None:
    """Signal the whole instance (its supervisor and every worker)."""
    try:
        os.killpg(server.process.pid, sig)
    except ProcessLookupError:
        pass
    server.process.wait(30)


def haproxy_or_skip() -> str:
    """The haproxy binary, installed with apt-get like redis-server when missing and root."""
    try:
        return ensure_haproxy()
    except (SystemExit, subprocess.CalledProcessError):
        pytest.skip("haproxy is not installed and apt-get cannot install it here")


@dataclass
class Balancer:
    url: str
    process: subprocess.Popen
    admin_socket: Path
    log_path: Path

    def command(self, line: str) -> str:
        """One command on HAProxy's runtime API (the `stats socket` of deploy/haproxy.cfg)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.admin_socket))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def sessions(self, server: str) -> int:
        """Requests the balancer has in flight on `server` (its `scur` in `show stat`)."""
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("svname") == server:
                return int(row["scur"] or 0)
        raise AssertionError(f"no server {server} in show stat")


def start_balancer(backends: list[str]) -> Balancer:
    """HAProxy from the Procfile's `lb` line with deploy/haproxy.cfg, round robin over two
    `host:port` backends (servers web1 and web2 of backend `gateways`)."""
    haproxy_or_skip()
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="haproxy-"))
    env = {
        **os.environ,
        "PATH": f"{PATH}{os.pathsep}/usr/sbin",
        "LB_BIND": f"127.0.0.1:{port}",
        "LB_ADMIN_SOCKET": str(workdir / "admin.sock"),
        "WEB1_ADDR": backends[0],
        "WEB2_ADDR": backends[1],
    }
    log_path = workdir / "haproxy.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            procfile_command("lb"), cwd=ROOT, env=env, stdout=log, stderr=log,
            start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"haproxy did not start: {log_path.read_text()}") from None
            time.sleep(0.05)
    return Balancer(f"http://127.0.0.1:{port}", process, workdir / "admin.sock", log_path)


def start_simulator_process(knobs: dict | None = None) -> tuple[str, subprocess.Popen]:
    """The upstream simulator as a server of its own (`manage.py run_simulator`), so that
    killing a gateway instance leaves the upstream of the others alone."""
    port = free_port()
    command = [
        sys.executable, "manage.py", "run_simulator", "--port", str(port), "--log-level",
        "warning", "--model-knobs", json.dumps(knobs or SIMULATOR_MODEL_KNOBS),
    ]  # fmt: skip
    env = {**os.environ, "DEBUG": "true"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/v1/models", timeout=1).status_code == 200:
                return url, process
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("the simulator did not start")
        time.sleep(0.1)


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
