"""`make stack`: the production process list (deploy/Procfile) on one machine, from local binaries.

Every process runs its own Procfile line (`sh -c "exec <line>"`) with the environment set
here, so this is the topology of deploy/compose.yaml without containers:

    db       PostgreSQL; initdb once, data in <var>/stack/pgdata (as the postgres user when root)
    redis    Redis with the append-only file in <var>/stack/redis
    release  migrate (then `seed_demo`, unless --no-seed)
    web1/2   two gateway instances on PORT+1 and PORT+2, WEB_CONCURRENCY workers each
    worker   a Celery worker
    beat     Celery beat (the beat lock makes a second one harmless)
    lb       HAProxy on PORT (default 8080), round robin over web1 and web2

The stores listen on free ports of 127.0.0.1; the URLs are printed. Logs go to
<var>/stack/log/<name>.log. Ctrl-C (or SIGTERM) stops everything: the balancer first, then
the gateways (they drain in-flight requests and the usage writer), Celery, and the stores
last, so the drain writes into a live database. When a process stops by itself the others
are stopped and the launcher exits non-zero with that process's log tail.
"""

import argparse
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import environ
from run_tests import _initdb, ensure_debian_binary, ensure_redis_server, free_port, pg_bin

ROOT = Path(__file__).resolve().parent.parent
PROCFILE = ROOT / "deploy" / "Procfile"
# Seconds each process gets after its stop signal before it is killed: the gateways' drain
# (DRAIN_SECONDS) plus the usage writer's flush.
STOP_TIMEOUT = 45.0
START_TIMEOUT = 60.0
LOG_TAIL_CHARS = 3000


def read_procfile(path: Path = PROCFILE) -> dict[str, str]:
    """`name: command` lines in order; comments and blank lines skipped."""
    processes = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, command = line.partition(":")
        processes[name.strip()] = command.strip()
    return processes


def ensure_haproxy() -> str:
    return ensure_debian_binary("haproxy", "haproxy", "/usr/sbin/haproxy")


def wait_until(ready, child: subprocess.Popen, name: str, log: Path) -> None:
    """Until `ready()` is true; a process that exits first, or a timeout, fails the stack."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and child.poll() is None:
        if ready():
            return
        time.sleep(0.1)
    raise StackError(name, log)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.2):
            return True
    except OSError:
        return False


def healthz_ok(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        connection.request("GET", "/healthz", headers={"Host": "localhost"})
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def postgres_ready(port: int) -> bool:
    # The port opens before recovery ends; pg_isready says when connections are accepted.
    command = [pg_bin("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)]
    return subprocess.run(command, check=False).returncode == 0


class StackError(Exception):
    def __init__(self, name: str, log: Path) -> None:
        super().__init__(f"{name} did not start or stopped")
        self.name = name
        self.log = log


@dataclass
class Stack:
    var: Path
    procfile: dict[str, str]
    children: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def start(self, name: str, kind: str, env: dict[str, str], *, user: str | None = None):
        log = self.var / "log" / f"{name}.log"
        self.logs[name] = log
        with log.open("ab") as out:
            # A session of its own: Ctrl-C reaches only this launcher, which then stops each
            # process once, in order. A second signal would make uvicorn skip its drain.
            self.children[name] = subprocess.Popen(
                ["sh", "-c", f"exec {self.procfile[kind]}"], cwd=ROOT, env=env, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True, user=user, group=user,
            )  # fmt: skip
        return self.children[name]

    def run(self, name: str, kind: str, env: dict[str, str]) -> None:
        """A one-off step (the release): to completion, failing the stack if it fails."""
        child = self.start(name, kind, env)
        if child.wait() != 0:
            raise StackError(name, self.logs[name])
        del self.children[name]

    def stop(self) -> None:
        """The balancer first (no new requests), then the gateways and Celery together (they
        drain into Redis and PostgreSQL), then Redis, then PostgreSQL."""
        stores = ["redis", "db"]
        first = [name for name in self.children if name == "lb"]
        middle = [name for name in self.children if name not in ("lb", *stores)]
        for group in (first, middle, ["redis"], ["db"]):
            running = [n for n in group if n in self.children and self.children[n].poll() is None]
            for name in running:
                # PostgreSQL's SIGTERM waits for every client to leave; SIGINT is its fast stop.
                self.children[name].send_signal(signal.SIGINT if name == "db" else signal.SIGTERM)
            for name in running:
                child = self.children[name]
                try:
                    child.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    print(f"run_stack: {name} did not stop in time; killing it", file=sys.stderr)
                    os.killpg(child.pid, signal.SIGKILL)
                    child.wait()

    def exited(self) -> str | None:
        for name, child in self.children.items():
            if child.poll() is not None:
                return name
        return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("STACK_PORT") or 8080))
    parser.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("WEB_CONCURRENCY") or 2),
        help="uvicorn workers per gateway instance (WEB_CONCURRENCY)",
    )
    parser.add_argument("--var-dir", type=Path, default=ROOT / "var")
    parser.add_argument("--no-seed", action="store_true", help="skip seed_demo after migrate")
    return parser.parse_args(argv)


def prepare_postgres(stack_dir: Path) -> tuple[Path, Path]:
    db_dir = stack_dir / "db"
    socket_dir = db_dir / "sock"
    socket_dir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(db_dir, "postgres")
        shutil.chown(socket_dir, "postgres")
    data = db_dir / "pgdata"
    if not data.exists():
        _initdb(data)
    return data, socket_dir


def create_database(port: int, name: str) -> None:
    # initdb creates only `postgres`; the stack's own database is made once.
    exists = subprocess.run(
        [pg_bin("psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "tollgate", "-d", "postgres",
         "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    if not exists:
        subprocess.run(
            [pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "tollgate", name],
            check=True,
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stack_dir = (args.var_dir / "stack").resolve()
    (stack_dir / "log").mkdir(parents=True, exist_ok=True)
    os.chmod(stack_dir, 0o755)
    # .env as settings read it (the environment wins), then the stack's own values on top.
    environ.Env.read_env(ROOT / ".env", overwrite=False)
    ensure_redis_server()
    ensure_haproxy()
    procfile = read_procfile()
    stack = Stack(var=stack_dir, procfile=procfile)

    pg_port, redis_port = free_port(), free_port()
    web_ports = [args.port + 1, args.port + 2]
    path = os.pathsep.join(
        [str(Path(sys.executable).parent), str(Path(pg_bin("postgres")).parent), os.environ["PATH"]]
    )
    base = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CELERY_")},
        "PATH": path,
        "PYTHONUNBUFFERED": "1",
        "DEBUG": os.environ.get("DEBUG", "true"),
        "DATABASE_URL": f"postgres://tollgate@127.0.0.1:{pg_port}/tollgate",
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        # The demo models reach the simulator mounted on the gateways through the balancer,
        # so they keep working while one instance is down. Read by seed_demo: set it first.
        "SIMULATOR_BASE_URL": f"http://127.0.0.1:{args.port}/simulator/v1",
        "BEAT_SCHEDULE_FILE": str(stack_dir / "celerybeat-schedule"),
    }

    stop_requested = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop_requested.set())
    signal.signal(signal.SIGTERM, lambda *_: stop_requested.set())
    try:
        data, socket_dir = prepare_postgres(stack_dir)
        db_env = {**base, "PGDATA": str(data), "PGPORT": str(pg_port), "PG_LISTEN": "127.0.0.1",
                  "PG_SOCKET_DIR": str(socket_dir)}  # fmt: skip
        db = stack.start("db", "db", db_env, user="postgres" if os.geteuid() == 0 else None)
        wait_until(lambda: postgres_ready(pg_port), db, "db", stack.logs["db"])
        redis_dir = stack_dir / "redis"
        redis_dir.mkdir(exist_ok=True)
        redis_env = {**base, "REDIS_PORT": str(redis_port), "REDIS_DIR": str(redis_dir)}
        redis = stack.start("redis", "redis", redis_env)
        wait_until(lambda: port_open(redis_port), redis, "redis", stack.logs["redis"])
        create_database(pg_port, "tollgate")

        stack.run("release", "release", base)
        if not args.no_seed:
            seeded = subprocess.run(
                [sys.executable, "manage.py", "seed_demo"], cwd=ROOT, env=base, check=False
            )
            if seeded.returncode != 0:
                return 1

        for index, port in enumerate(web_ports, start=1):
            instance = stack_dir / f"web{index}"
            metrics = instance / "metrics"
            shutil.rmtree(metrics, ignore_errors=True)  # multiprocess metrics start empty
            metrics.mkdir(parents=True)
            web_env = {
                **base,
                "PORT": str(port),
                "WEB_HOST": "127.0.0.1",
                "WEB_CONCURRENCY": str(args.workers),
                "PROMETHEUS_MULTIPROC_DIR": str(metrics),
                "USAGE_SPOOL_DIR": str(instance / "spool"),
            }
            stack.start(f"web{index}", "web", web_env)
        for index, port in enumerate(web_ports, start=1):
            name = f"web{index}"
            wait_until(lambda p=port: healthz_ok(p), stack.children[name], name, stack.logs[name])
        stack.start("worker", "worker", base)
        stack.start("beat", "beat", base)
        lb_env = {
            **base,
            "LB_BIND": f"127.0.0.1:{args.port}",
            "LB_CHECK_HOST": os.environ.get("LB_CHECK_HOST", "localhost"),
            "LB_ADMIN_SOCKET": str(stack_dir / "haproxy.sock"),
            "WEB1_ADDR": f"127.0.0.1:{web_ports[0]}",
            "WEB2_ADDR": f"127.0.0.1:{web_ports[1]}",
        }
        lb = stack.start("lb", "lb", lb_env)
        wait_until(lambda: port_open(args.port), lb, "lb", stack.logs["lb"])

        print(
            f"Stack up: http://127.0.0.1:{args.port} (HAProxy) -> gateways on "
            f"{web_ports[0]} and {web_ports[1]} ({args.workers} workers each)\n"
            f"  DATABASE_URL={base['DATABASE_URL']}\n  REDIS_URL={base['REDIS_URL']}\n"
            f"  HAProxy runtime API: {stack_dir / 'haproxy.sock'}\n"
            f"  logs: {stack_dir / 'log'}/*.log   (Ctrl-C stops everything)",
            flush=True,
        )
        while not stop_requested.wait(0.5):
            name = stack.exited()
            if name is not None:
                raise StackError(name, stack.logs[name])
        return 0
    except StackError as exc:
        tail = exc.log.read_text(errors="replace")[-LOG_TAIL_CHARS:] if exc.log.exists() else ""
        print(f"run_stack: {exc}; stopping the stack\n{tail}", file=sys.stderr)
        return 1
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
