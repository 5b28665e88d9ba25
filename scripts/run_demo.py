"""`make run` after migrate and seed: the demo's Celery worker with beat, and the gateway.

Two child processes:

- `celery -A gateway_portal worker -B --pool solo`: one worker with beat embedded, so the
  schedule in settings.CELERY_BEAT_SCHEDULE runs (rollups and statements, key expiry, expiry
  warnings, scheduled rotation). With no broker configured (no CELERY_BROKER_URL or
  REDIS_URL, the embedded demo) it uses kombu's filesystem broker under `<var>/celery/`.
  Its output goes to `<var>/log/celery.log`, so the console stays uvicorn's.
- uvicorn serving the ASGI app on 127.0.0.1. It gets the environment as it was: without a
  broker it runs the tasks it queues itself, eagerly (see the Celery block in settings).

Before the worker starts, every scheduled task is queued once: beat first runs an entry one
interval after it starts (30 minutes for the rollup), and a fresh demo should show this
month's statements within a minute. Each task is idempotent, so this is safe on every start.

SIGINT and SIGTERM stop both children. When either stops by itself the other is stopped and
the launcher exits non-zero; the worker is not restarted, so its failure is seen.
"""

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import environ

ROOT = Path(__file__).resolve().parent.parent
# Seconds a child gets to finish after SIGTERM (the worker finishes its current task, the
# gateway drains its usage buffer) before it is killed.
STOP_TIMEOUT = 30.0
LOG_TAIL_CHARS = 3000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 8000))
    parser.add_argument(
        "--var-dir",
        type=Path,
        default=ROOT / "var",
        help="where the broker folders, beat's schedule and the worker's log go",
    )
    return parser.parse_args(argv)


def worker_env(env: dict[str, str], var_dir: Path) -> dict[str, str]:
    """The worker's environment: the filesystem broker unless a broker is configured."""
    if env.get("CELERY_BROKER_URL") or env.get("REDIS_URL"):
        return dict(env)
    return {
        **env,
        "CELERY_BROKER_URL": "filesystem://",
        "FILESYSTEM_BROKER_DIR": str(var_dir / "celery"),
    }


def queue_schedule_once(env: dict[str, str]) -> list[str]:
    """Queue each beat entry once, on the worker's broker; returns the task names."""
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_portal.settings")
    sys.path.insert(0, str(ROOT))
    from django.conf import settings

    from gateway_portal.celery import app

    names = []
    for entry in settings.CELERY_BEAT_SCHEDULE.values():
        app.send_task(entry["task"], args=entry.get("args"), kwargs=entry.get("kwargs"))
        names.append(entry["task"])
    return names


def worker_command(var_dir: Path) -> list[str]:
    # Solo pool: one task at a time, which is all one SQLite writer allows anyway; mingle,
    # gossip and heartbeats talk to other workers, and there are none.
    return [
        sys.executable, "-m", "celery", "-A", "gateway_portal", "worker", "--beat",
        "--pool", "solo", "--loglevel", "INFO", "--schedule", str(var_dir / "celerybeat-schedule"),
        "--without-mingle", "--without-gossip", "--without-heartbeat",
    ]  # fmt: skip


def web_command(port: int) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", "gateway_portal.asgi:application",
        "--host", "127.0.0.1", "--port", str(port),
        "--loop", "uvloop", "--http", "httptools", "--no-access-log",
    ]  # fmt: skip


def start(command: list[str], env: dict[str, str], **kwargs) -> subprocess.Popen:
    # A session of its own: Ctrl-C in the terminal reaches only this launcher, which sends one
    # SIGTERM. A second signal would make uvicorn skip its drain and the worker stop cold.
    return subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True, **kwargs)


def stop(children: dict[str, subprocess.Popen]) -> None:
    for child in children.values():
        if child.poll() is None:
            child.terminate()
    for child in children.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(STOP_TIMEOUT)
        # Then whatever is left in the child's session: the worker's beat process outlives a
        # worker that was killed, and would go on queueing tasks.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def exited(children: dict[str, subprocess.Popen]) -> Iterator[tuple[str, int]]:
    for name, child in children.items():
        code = child.poll()
        if code is not None:
            yield name, code


def log_tail(path: Path) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return text[-LOG_TAIL_CHARS:]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    var_dir = args.var_dir.resolve()
    log_path = var_dir / "log" / "celery.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # .env as settings read it (the environment wins), so the broker chosen here is the one
    # every process's settings see. The web process gets that environment unchanged.
    environ.Env.read_env(ROOT / ".env", overwrite=False)
    web_env = {**os.environ, "PORT": str(args.port)}
    celery_env = worker_env(web_env, var_dir)

    stop_requested = threading.Event()

    def on_signal(signum: int, frame) -> None:
        stop_requested.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    queued = queue_schedule_once(celery_env)
    if celery_env.get("CELERY_BROKER_URL", "").startswith("filesystem://"):
        broker = f"filesystem broker in {var_dir / 'celery'}"
    else:
        broker = "the configured broker"  # its URL may hold a password: not printed
    print(
        f"Celery worker and beat ({broker}): log in {log_path}\n"
        f"  queued once at start: {', '.join(queued)}",
        flush=True,
    )
    children: dict[str, subprocess.Popen] = {}
    try:
        with log_path.open("ab") as log:
            children["celery worker"] = start(
                worker_command(var_dir), celery_env, stdout=log, stderr=subprocess.STDOUT
            )
        children["uvicorn"] = start(web_command(args.port), web_env)
        print(f"Serving http://127.0.0.1:{args.port} (Ctrl-C stops both)", flush=True)
        while not stop_requested.wait(0.5):
            for name, code in exited(children):
                print(f"run_demo: {name} exited with code {code}; stopping", file=sys.stderr)
                if name == "celery worker":
                    print(log_tail(log_path), file=sys.stderr)
                return 1
        return 0
    finally:
        stop(children)


if __name__ == "__main__":
    sys.exit(main())
