"""Real failures: the database cut mid-run, a writer and a gateway worker SIGKILLed."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import redis
from django.db import connection

from apps.usage.buffer import CONSUMER_GROUP, RedisStreamBuffer
from apps.usage.models import UsageDeadLetter, UsageRecord
from apps.usage.writer import UsageWriter
from tests.usage.helpers import (
    ROOT,
    TcpProxy,
    await_for,
    database_url,
    free_port,
    make_event,
    wait_for,
    writer_process,
)

pytestmark = pytest.mark.django_db(transaction=True)


def pending_of(client: redis.Redis, stream: str, consumer: str) -> int:
    try:
        consumers = client.xinfo_consumers(stream, CONSUMER_GROUP)
    except redis.ResponseError:
        return 0  # the writer has not created the group yet
    for entry in consumers:
        if entry["name"] == consumer.encode():
            return entry["pending"]
    return 0


async def test_database_outage_keeps_rows_pending_then_writes_each_once(
    redis_url, stream, tmp_path
):
    conf = connection.settings_dict
    relay = TcpProxy(conf["HOST"] or "127.0.0.1", int(conf["PORT"]))  # starts cut
    proc = writer_process(
        stream=stream,
        consumer="w1",
        db_url=database_url("127.0.0.1", relay.port),
        spool_dir=tmp_path,
    )
    client = redis.Redis.from_url(redis_url)
    try:
        producer = RedisStreamBuffer(redis_url, stream=stream, spool_dir=tmp_path / "p")
        events = [make_event() for _ in range(60)]
        for event in events:
            await producer.put(event)
        # The writer fetched them, failed to insert, and kept them pending (not acked).
        assert wait_for(lambda: pending_of(client, stream, "w1") == 60, timeout=15)
        assert await UsageRecord.objects.acount() == 0

        relay.restore()

        async def all_written() -> bool:
            return await UsageRecord.objects.acount() >= 60

        assert await await_for(all_written, timeout=15)
        assert wait_for(lambda: pending_of(client, stream, "w1") == 0)
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        stderr = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        relay.close()
        client.close()
    assert await UsageRecord.objects.acount() == 60
    ids = {rid async for rid in UsageRecord.objects.values_list("request_id", flat=True)}
    assert ids == {e.request_id for e in events}
    # An outage is not a row problem: nothing may be dead-lettered while the database is away.
    assert not await UsageDeadLetter.objects.aexists()
    # One log line for the outage, not one per attempt or per row.
    assert stderr.count("database unavailable") == 1, stderr


async def test_writer_killed_mid_batch_loses_nothing(redis_url, stream, tmp_path):
    client = redis.Redis.from_url(redis_url)
    producer = RedisStreamBuffer(redis_url, stream=stream, spool_dir=tmp_path / "p")
    events = [make_event() for _ in range(50)]
    for event in events:
        await producer.put(event)
    # This writer reads the batch but cannot commit it (its database is unreachable)...
    proc = writer_process(
        stream=stream,
        consumer="doomed",
        db_url=database_url("127.0.0.1", free_port()),
        spool_dir=tmp_path,
    )
    try:
        assert wait_for(lambda: pending_of(client, stream, "doomed") == 50, timeout=15)
    finally:
        proc.send_signal(signal.SIGKILL)  # ...and dies holding it, unacked.
        proc.wait(10)
    # Another gateway's writer reclaims what the dead consumer left pending.
    rescuer = RedisStreamBuffer(
        redis_url, stream=stream, spool_dir=tmp_path / "r", consumer="rescuer", claim_idle_ms=300
    )
    writer = UsageWriter(rescuer, flush_interval=0.05)
    await writer.start()

    async def all_written() -> bool:
        return await UsageRecord.objects.acount() >= 50

    assert await await_for(all_written, timeout=10)
    await writer.stop()
    assert await UsageRecord.objects.acount() == 50
    assert pending_of(client, stream, "doomed") == 0
    assert client.xpending(stream, CONSUMER_GROUP)["pending"] == 0
    client.close()


async def test_gateway_worker_sigkilled_after_answering_loses_no_row(redis_url, stream, tmp_path):
    """`put` returning means durable: a worker killed right after loses none of its rows."""
    script = textwrap.dedent(
        f"""
        import asyncio, os, signal, django
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_portal.settings")
        django.setup()
        from apps.usage.buffer import RedisStreamBuffer
        from tests.usage.helpers import make_event

        async def serve():
            buffer = RedisStreamBuffer({redis_url!r}, stream={stream!r}, spool_dir={str(tmp_path)!r})
            for n in range(30):
                await buffer.put(make_event(request_id=f"req_killed_{{n}}"))
                print(n, flush=True)  # the response would be finished here
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(serve())
        """
    )
    env = {**os.environ, "DEBUG": "true"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, check=False
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    answered = len(result.stdout.splitlines())
    assert answered == 30

    writer = UsageWriter(RedisStreamBuffer(redis_url, stream=stream, spool_dir=tmp_path))
    assert await writer.drain_all() == answered
    await writer.close()
    assert await UsageRecord.objects.filter(request_id__startswith="req_killed_").acount() == 30
