"""`make run`'s launcher (scripts/run_demo.py) in embedded mode, no Redis: a real Celery worker
with beat on kombu's filesystem broker runs the schedule beside the gateway, on the test
database, with nothing run by hand."""

import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from django.utils import timezone

from apps.accounts.audit import AuditAction
from apps.accounts.models import ApiKey, AuditLog
from apps.billing.constants import SubjectType
from apps.billing.models import Statement, Tier
from apps.billing.services import subscription_change, tiers_seed_demo
from apps.billing.subjects import BillingSubject
from tests import factories
from tests.billing.helpers import add_usage, usage_row
from tests.proxy.conftest import free_port
from tests.proxy.conftest import test_database_url as database_url

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.embedded, pytest.mark.django_db(transaction=True)]


@dataclass
class Demo:
    process: subprocess.Popen
    var_dir: Path
    output_path: Path
    url: str

    @property
    def log_path(self) -> Path:
        return self.var_dir / "log" / "celery.log"

    def celery_log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def children(self) -> dict[int, str]:
        return children_of(self.process.pid)

    def wait_for(self, what: str, check: Callable[[], object], timeout: float = 45.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = check()
            if found:
                return found
            if self.process.poll() is not None:
                break
            time.sleep(0.3)
        pytest.fail(f"{what}: not seen\n{self.output()[-2000:]}\n{self.celery_log()[-3000:]}")


def children_of(pid: int) -> dict[int, str]:
    listed = subprocess.run(
        ["ps", "-o", "pid=,args=", "--ppid", str(pid)], capture_output=True, text=True, check=False
    ).stdout
    rows = (line.strip().split(" ", 1) for line in listed.splitlines() if line.strip())
    return {int(pid): args for pid, args in rows}


def running(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its new parent to reap it does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def all_stopped(pids, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while any(running(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.fixture
def start_demo(transactional_db, tmp_path) -> Iterator[Callable[[], Demo]]:
    """Starts the launcher with a temp var dir and a two-second rollup interval; stops it
    (SIGTERM) before the test database is flushed."""
    started: list[Demo] = []

    def start() -> Demo:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in {"REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"}
        }
        env.update(
            DEBUG="true",
            DATABASE_URL=database_url(),
            USAGE_ROLLUP_INTERVAL_SECONDS="2",
            EMAIL_BACKEND="django.core.mail.backends.console.EmailBackend",
        )
        port = free_port()
        var_dir = tmp_path / "var"
        output_path = tmp_path / "run_demo.out"
        command = [
            sys.executable, "scripts/run_demo.py", "--port", str(port), "--var-dir", str(var_dir),
        ]  # fmt: skip
        with output_path.open("wb") as output:
            process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT
            )
        demo = Demo(process, var_dir, output_path, f"http://127.0.0.1:{port}")
        started.append(demo)

        def healthy() -> bool:
            try:
                return httpx.get(f"{demo.url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        demo.wait_for("the gateway's /healthz", healthy)
        return demo

    yield start
    for demo in started:
        if demo.process.poll() is None:
            demo.process.send_signal(signal.SIGTERM)
            try:
                demo.process.wait(40)
            except subprocess.TimeoutExpired:
                demo.process.kill()
                demo.process.wait()


def this_month() -> dt.date:
    return timezone.now().astimezone(dt.UTC).date().replace(day=1)


def subscribe(team) -> None:
    tiers_seed_demo()
    start = dt.datetime.combine(this_month(), dt.time(), tzinfo=dt.UTC)
    subscription_change(
        subject=BillingSubject(type=SubjectType.TEAM, team=team),
        tier=Tier.objects.get(name="Professional"),
        at=start,
    )


def add_tokens(team, user, count: int) -> int:
    """`count` rows of this month (today, so the month is right on its first day too);
    returns their tokens."""
    now = timezone.now()
    rows = [usage_row(team_id=team.pk, user_id=user.pk, created_at=now) for _ in range(count)]
    add_usage(rows)
    return sum(row.input_tokens + row.output_tokens for row in rows)


def expired_key(user) -> ApiKey:
    key, _ = factories.make_key(user=user, name="expired")
    ApiKey.objects.filter(pk=key.pk).update(expires_at=timezone.now() - dt.timedelta(hours=1))
    return key


def statement_tokens(team) -> int | None:
    subject = BillingSubject(type=SubjectType.TEAM, team=team)
    found = Statement.objects.filter(subject_key=subject.key, month=this_month())
    return next(iter(found.values_list("used_tokens", flat=True)), None)


def retired(key: ApiKey) -> bool:
    return ApiKey.objects.filter(pk=key.pk, retired_at__isnull=False).exists()


def test_a_fresh_start_writes_statements_and_retires_expired_keys_then_beat_rolls_up(
    start_demo, team, user
):
    subscribe(team)
    tokens = add_tokens(team, user, 3)
    key = expired_key(user)
    assert Statement.objects.count() == 0

    demo = start_demo()

    # Nothing run by hand: the launcher queued the schedule once at start.
    assert f"log in {demo.log_path}" in demo.output()
    assert demo.wait_for("this month's statement", lambda: statement_tokens(team)) == tokens
    demo.wait_for("the expired key retired", lambda: retired(key))
    assert AuditLog.objects.filter(action=AuditAction.KEY_EXPIRED, object_id=str(key.pk)).exists()
    assert "Task accounts.retire_expired_keys[" in demo.celery_log()

    # Usage arriving later reaches the statement through beat's two-second rollup.
    more = add_tokens(team, user, 2)
    demo.wait_for(
        "the statement rolled up by beat", lambda: statement_tokens(team) == tokens + more
    )
    assert "Scheduler: Sending due task usage.rollups_refresh" in demo.celery_log()


def test_a_task_queued_by_another_process_runs_in_the_worker(start_demo, user):
    demo = start_demo()
    start_up_run = re.compile(r"Task accounts\.retire_expired_keys\[[^\]]+\] succeeded")
    demo.wait_for("the start-up run", lambda: start_up_run.search(demo.celery_log()))
    key = expired_key(user)
    # A manage.py process on the demo's broker (what the worker's settings see) queues it;
    # beat would not run it for five minutes.
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "CELERY_RESULT_BACKEND"}}
    env.update(
        DEBUG="true",
        DATABASE_URL=database_url(),
        CELERY_BROKER_URL="filesystem://",
        FILESYSTEM_BROKER_DIR=str(demo.var_dir / "celery"),
    )
    queue = (
        "from apps.accounts.tasks import retire_expired_keys; print(retire_expired_keys.delay().id)"
    )
    sent = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", queue],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    task_id = sent.stdout.strip().splitlines()[-1]
    # Its id in the worker's log: the worker ran it, not the sending process.
    demo.wait_for(
        "the queued task's id in the worker log",
        lambda: f"retire_expired_keys[{task_id}] succeeded" in demo.celery_log(),
    )
    assert retired(key)

    # SIGTERM stops the worker (and its beat) and the gateway, and the launcher exits 0.
    children = demo.children()
    assert len(children) == 2
    demo.process.send_signal(signal.SIGTERM)
    assert demo.process.wait(40) == 0
    assert all_stopped(children)


def test_the_launcher_stops_and_fails_when_the_worker_dies(start_demo):
    demo = start_demo()
    children = demo.children()
    worker = next(pid for pid, args in children.items() if "celery" in args)
    web = next(pid for pid, args in children.items() if "uvicorn" in args)
    beat = demo.wait_for("the worker's beat process", lambda: list(children_of(worker)))

    os.kill(worker, signal.SIGKILL)

    assert demo.process.wait(40) == 1
    assert "celery worker exited with code -9" in demo.output()
    # The gateway is stopped, and so is beat, which would go on queueing tasks on its own.
    assert all_stopped([web, *beat])
