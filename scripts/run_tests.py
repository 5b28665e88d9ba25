"""Run the whole suite against throwaway PostgreSQL and Redis servers, then embedded mode.

Started from local binaries on free ports (initdb/pg_ctl, redis-server), stopped at exit.
`make test` calls this; extra arguments go to pytest.
"""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_debian_binary(name: str, package: str, fallback: str) -> str:
    """The path of `name`, installing its Debian `package` first when missing and root."""
    found = shutil.which(name)
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"{name} missing: installing it with apt-get", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True)
        return shutil.which(name) or fallback
    sys.exit(f"{name} is not installed and cannot be installed (not root)")


def ensure_redis_server() -> str:
    return ensure_debian_binary("redis-server", "redis-server", "/usr/bin/redis-server")


def pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)
    if not candidates:
        sys.exit(f"{name} not found: install PostgreSQL server binaries")
    return str(candidates[0])


def as_postgres_user(cmd: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root, so drop to the postgres account."""
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


@contextlib.contextmanager
def postgres(workdir: Path):
    """A PostgreSQL server on a free port; a data directory already in `workdir` is reused."""
    data = workdir / "pgdata"
    sock = workdir / "pgsock"
    sock.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(workdir, "postgres")
        shutil.chown(sock, "postgres")
    port = free_port()
    if not data.exists():
        _initdb(data)
    opts = (
        f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    subprocess.run(
        as_postgres_user(
            [
                pg_bin("pg_ctl"),
                "-D",
                str(data),
                "-o",
                opts,
                "-l",
                str(workdir / "pg.log"),
                "-w",
                "start",
            ]
        ),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    try:
        yield f"postgres://tollgate@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            as_postgres_user([pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "stop"]),
            check=False,
            stdout=subprocess.DEVNULL,
        )


def _initdb(data: Path) -> None:
    subprocess.run(
        as_postgres_user(
            [
                pg_bin("initdb"),
                "-D",
                str(data),
                "-U",
                "tollgate",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
            ]
        ),
        check=True,
        stdout=subprocess.DEVNULL,
    )


@contextlib.contextmanager
def redis(workdir: Path):
    port = free_port()
    proc = subprocess.Popen(
        [
            ensure_redis_server(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            break
        time.sleep(0.05)
    try:
        yield url, port
    finally:
        proc.terminate()
        proc.wait(10)


def run_pytest(env: dict, args: list[str]) -> int:
    return subprocess.run(
        [PYTHON, "-m", "pytest", *args], cwd=ROOT, env=env, check=False
    ).returncode


def main(argv: list[str]) -> int:
    base_env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}
    }
    base_env["DEBUG"] = "true"
    # seed_demo runs in many tests; a small synthetic history keeps them quick.
    base_env.setdefault("DEMO_USAGE_ROWS", "500")
    with tempfile.TemporaryDirectory(prefix="tollgate-test-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)
        with postgres(workdir) as database_url, redis(workdir) as (redis_url, redis_port):
            env = {
                **base_env,
                "DATABASE_URL": database_url,
                "REDIS_URL": redis_url,
                "TEST_REDIS_SERVER": ensure_redis_server(),
                "TEST_REDIS_PORT": str(redis_port),
                "TEST_PG_SOCKET_DIR": str(workdir / "pgsock"),
            }
            print(
                f"== suite against PostgreSQL ({database_url}) and Redis ({redis_url})", flush=True
            )
            services_rc = run_pytest(env, argv)
        if os.environ.get("SKIP_EMBEDDED"):  # quicker local iterations
            return services_rc
        embedded_env = {
            **base_env,
            "DATABASE_URL": f"sqlite:///{workdir / 'embedded.sqlite3'}",
            "TOLLGATE_EMBEDDED_TESTS": "1",
        }
        print("== embedded mode: SQLite, no Redis, in-process counters", flush=True)
        embedded_rc = run_pytest(embedded_env, ["-m", "embedded", *argv])
    if embedded_rc == 5:  # no embedded test selected by the extra arguments
        embedded_rc = 0
    print(f"== services suite exit {services_rc}, embedded suite exit {embedded_rc}", flush=True)
    return services_rc or embedded_rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
