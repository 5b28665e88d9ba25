"""Exactly one beat sends the schedule: the lease itself against the test Redis, then two real
`celery beat` processes (the Procfile's `beat` line) where only the holder sends and the
other takes over when the holder is SIGKILLed."""

import json
import os
import signal
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
import redis

from gateway_portal.beat_lock import BeatLock, beat_lock_from_settings
from tests.deploy.conftest import PATH, ROOT, procfile_command
from tests.proxy.tcp_proxy import TcpProxy

pytestmark = pytest.mark.services


@pytest.fixture
def client() -> redis.Redis:
    return redis.Redis.from_url(os.environ["REDIS_URL"])


def lock(client: redis.Redis, key: str, ttl: float = 0.6) -> BeatLock:
    return BeatLock(client, key=key, ttl_seconds=ttl)


def test_one_holder_at_a_time_and_a_takeover_when_the_lease_runs_out(client):
    key = f"test:beat-lock:{uuid.uuid4().hex}"
    first, second = lock(client, key, ttl=1.5), lock(client, key, ttl=1.5)
    assert first.hold() is True
    assert second.hold() is False
    time.sleep(1.0)
    assert first.hold() is True  # renewed: a full TTL again from now
    time.sleep(1.0)
    assert second.hold() is False  # 2 s after the take, but 1 s after the renewal
    time.sleep(0.8)  # the holder stopped renewing: the lease runs out
    assert second.hold() is True
    assert first.hold() is False  # and the old holder knows it lost it
    assert client.get(key) == second.token.encode()


def test_a_clean_stop_hands_the_lease_over_at_once(client):
    key = f"test:beat-lock:{uuid.uuid4().hex}"
    first, second = lock(client, key, ttl=30), lock(client, key, ttl=30)
    assert first.hold() and not second.hold()
    first.release()
    assert second.hold() is True
    first.release()  # not its lease any more: deletes nothing
    assert client.get(key) == second.token.encode()


def test_a_holder_cut_off_from_redis_stops_before_another_can_take_over(client):
    key = f"test:beat-lock:{uuid.uuid4().hex}"
    address = client.connection_pool.connection_kwargs
    proxy = TcpProxy(address["host"], address["port"])
    try:
        cut_off = redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=0.2)
        holder, standby = lock(cut_off, key, ttl=0.9), lock(client, key, ttl=0.9)
        assert holder.hold() is True
        proxy.cut()
        cut_at = time.monotonic()
        sends_while_cut_off = []
        taken_at = None
        while time.monotonic() - cut_at < 2.0:
            sends_while_cut_off.append((time.monotonic(), holder.hold()))
            if taken_at is None and standby.hold():
                taken_at = time.monotonic()
            time.sleep(0.05)
    finally:
        proxy.close()
    assert taken_at is not None  # the standby got it once the lease ran out
    # The cut-off holder claimed the lease only while it surely still had it.
    claimed = [at for at, held in sends_while_cut_off if held]
    assert claimed  # a blip shorter than the lease does not stop the schedule
    assert all(at < taken_at for at in claimed)


@pytest.mark.embedded
def test_no_lock_without_redis(settings):
    settings.REDIS_URL = ""
    assert beat_lock_from_settings() is None


# --- two real beats ---------------------------------------------------------------------------


def sent_by(client: redis.Redis) -> Counter:
    """Task messages waiting on the broker's `celery` queue, counted by the sending pid."""
    origins = Counter()
    for raw in client.lrange("celery", 0, -1):
        message = json.loads(raw)
        origin = message["headers"]["origin"]  # "gen<pid>@<host>"
        origins[int(origin.split("@")[0].removeprefix("gen"))] += 1
    return origins


def start_beat(env: dict, workdir: Path, name: str) -> subprocess.Popen:
    env = {**env, "BEAT_SCHEDULE_FILE": str(workdir / f"{name}-schedule")}
    log = (workdir / f"{name}.log").open("wb")
    return subprocess.Popen(procfile_command("beat"), cwd=ROOT, env=env, stdout=log, stderr=log)


def wait_until(predicate, timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
    return time.monotonic()


def test_of_two_beats_only_one_sends_and_the_other_takes_over_when_it_dies(client):
    # A database of its own on the test Redis: no worker of another test reads this queue.
    url = os.environ["REDIS_URL"].rsplit("/", 1)[0] + "/7"
    broker = redis.Redis.from_url(url)
    broker.flushdb()
    workdir = Path(tempfile.mkdtemp(prefix="beats-"))
    env = {
        **os.environ,
        "PATH": PATH,
        "DEBUG": "true",
        "REDIS_URL": url,
        "CELERY_BROKER_URL": url,
        "BEAT_LOCK_TTL_SECONDS": "1.5",
        # The rollup entry falls due every 0.5 s, so a sending beat shows at once.
        "USAGE_ROLLUP_INTERVAL_SECONDS": "0.5",
    }
    first = start_beat(env, workdir, "first")
    second = None
    try:
        wait_until(lambda: sent_by(broker)[first.pid] > 0, 30, "the first beat to send")
        second = start_beat(env, workdir, "second")
        wait_until(
            lambda: "standing by" in (workdir / "second.log").read_text(), 30, "the second beat"
        )
        time.sleep(2.0)  # both running, well past the TTL
        both_running = sent_by(broker)
        assert set(both_running) == {first.pid}, both_running
        assert both_running[first.pid] >= 4

        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed_at = time.monotonic()
        assert sent_by(broker)[second.pid] == 0  # it never sent while the first lived
        took_over_at = wait_until(
            lambda: sent_by(broker)[second.pid] > 0, 10, "the second beat to take over"
        )
        # The lease runs out within its TTL; the standby looks every TTL/3.
        assert took_over_at - killed_at < 1.5 + 0.5 + 1.0, took_over_at - killed_at
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(20)
        broker.flushdb()
