"""Shared fixtures: tenancy rows and the mode (services or embedded) the suite runs in."""

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import factories

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = bool(os.environ.get("TOLLGATE_EMBEDDED_TESTS"))


def pytest_collection_modifyitems(config, items):
    if os.environ.get("DATABASE_URL", "").startswith("postgres"):
        return
    # Without the test set-up's services only embedded-mode tests can run.
    skip = pytest.mark.skip(reason="needs PostgreSQL and Redis from `make test`")
    for item in items:
        if "embedded" not in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix) -> None:
    """Between transactional tests the database is flushed with one TRUNCATE while gateway
    processes started by the tests still poll their catalog and quota rules. A poll holding
    one table and waiting for another deadlocks with the TRUNCATE; PostgreSQL aborts
    whichever session's deadlock_timeout runs out first. Waiting longer here makes that the
    gateway's poll (which just retries), not the test's flush."""
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("postgresql"):
        database.setdefault("OPTIONS", {})["options"] = "-c deadlock_timeout=10s"


@pytest.fixture(scope="session", autouse=True)
def flush_retried_on_deadlock() -> Iterator[None]:
    """The flush between transactional tests is retried when PostgreSQL picked it as a
    deadlock's victim anyway (see above: a gateway's poll is meant to lose). The failed
    TRUNCATE rolled back whole, so running it again is safe."""
    from django.core.management.base import CommandError
    from django.test import TransactionTestCase

    original = TransactionTestCase._fixture_teardown

    def teardown(self: TransactionTestCase) -> None:
        for attempt in range(3):
            try:
                return original(self)
            except CommandError as error:
                if attempt == 2 or "deadlock detected" not in str(error.__cause__):
                    raise

    TransactionTestCase._fixture_teardown = teardown
    yield
    TransactionTestCase._fixture_teardown = original


@pytest.fixture
def team(db):
    return factories.make_team("Frontend", slug="frontend", default_tags={"cost_center": "cc-200"})


@pytest.fixture
def other_team(db):
    return factories.make_team("Backend", slug="backend")


@pytest.fixture
def user(team):
    return factories.make_user("alice", team=team)


@pytest.fixture
def virtual_account(team):
    return factories.make_virtual_account(
        team, name="countdown-bot", default_tags={"feature": "bot"}
    )


@pytest.fixture
def api_key(user):
    """(ApiKey row, plaintext secret)."""
    return factories.make_key(user=user, default_tags={"environment": "test"})


@pytest.fixture
def celery_worker_process() -> Iterator[Path]:
    """A real worker on the test database and the test Redis; yields its log file."""
    from tests.proxy.conftest import test_database_url

    redis_url = os.environ["REDIS_URL"]
    log_path = Path(tempfile.mkstemp(prefix="celery-worker-", suffix=".log")[1])
    env = {
        **os.environ,
        "DEBUG": "true",
        "DATABASE_URL": test_database_url(),
        "CELERY_BROKER_URL": redis_url,
        "CELERY_RESULT_BACKEND": redis_url,
        "EMAIL_BACKEND": "django.core.mail.backends.console.EmailBackend",
    }
    command = [
        sys.executable, "-m", "celery", "-A", "gateway_portal", "worker",
        "--pool", "solo", "-Q", "celery", "--loglevel", "INFO", "--without-mingle",
        "--without-gossip", "--without-heartbeat",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
    try:
        yield log_path
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


def task_result(result, worker_log: Path, timeout: float = 90):
    """The return value of a task sent to `celery_worker_process`, read from the Redis result
    backend; on failure the worker's log tail is printed for the report."""
    from celery.backends.redis import RedisBackend
    from celery.result import AsyncResult

    from gateway_portal.celery import app as celery_app

    backend = RedisBackend(app=celery_app, url=os.environ["REDIS_URL"])
    try:
        return AsyncResult(result.id, backend=backend, app=celery_app).get(timeout=timeout)
    except Exception:
        print(worker_log.read_text(errors="replace")[-4000:])
        raise
