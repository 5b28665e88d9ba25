"""The Redis stream buffer against the real Redis: consumer group, idempotency, spool fallback."""

import asyncio
import time

import pytest
import redis

from apps.usage.buffer import RedisStreamBuffer
from apps.usage.models import UsageDeadLetter, UsageRecord
from apps.usage.writer import UsageWriter
from tests.usage.helpers import await_for, free_port, make_event

pytestmark = pytest.mark.django_db(transaction=True)


async def test_put_then_writer_inserts_acks_and_deletes(redis_url, stream, tmp_path):
    buffer = RedisStreamBuffer(redis_url, stream=stream, spool_dir=tmp_path)
    events = [make_event() for _ in range(25)]
    for event in events:
        await buffer.put(event)
    client = redis.asyncio.Redis.from_url(redis_url)
    assert await client.xlen(stream) == 25

    writer = UsageWriter(buffer, batch_size=10, flush_interval=0.05)
    assert await writer.drain_all() == 25
    assert await UsageRecord.objects.acount() == 25
    assert await buffer.pending_count() == 0
    # Acked entries are deleted, so the stream does not grow without MAXLEN trimming.
    assert await client.xlen(stream) == 0
    await writer.close()
    await client.aclose()


async def test_two_writers_in_one_group_write_each_row_once(redis_url, stream, tmp_path):
    producer = RedisStreamBuffer(redis_url, stream=stream, spool_dir=tmp_path)
    writers = [
        UsageWriter(
            RedisStreamBuffer(redis_url, stream=stream, spool_dir=tmp_path, consumer=name),
            batch_size=20,
            flush_interval=0.02,
        )
        for name in ("gw-1", "gw-2")
    ]
    for writer in writers:
        await writer.start()
    events = [make_event() for _ in range(300)]
    await asyncio.gather(*(producer.put(event) for event in events))

    async def all_written() -> bool:
        return await UsageRecord.objects.acount() >= 300

    assert await await_for(all_written)
    for writer in writers:
        await writer.stop()
    assert await UsageRecord.objects.acount() == 300
    assert await producer.pending_count() == 0
    # A burst of concurrent puts waits for a pooled connection rather than spooling.
    assert not list(tmp_path.glob("usage-*"))
    client = redis.asyncio.Redis.from_url(redis_url)
    consumers = await client.xinfo_consumers(stream, "usage-writers")
    # Both writers took a share of the work.
    assert {c["name"] for c in consumers} == {b"gw-1", b"gw-2"}
    await client.aclose()


async def test_replayed_event_is_counted_once(redis_url, stream, tmp_path):
    buffer = RedisStreamBuffer(redis_url, stream=stream, spool_dir=tmp_path)
    event = make_event()
    await buffer.put(event)
    writer = UsageWriter(buffer)
    assert await writer.drain_all() == 1
    # The same request arrives again (an XADD retried after a timeout, a spool copy...).
    await buffer.put(event)
    await asyncio.to_thread(buffer.spool.append, [event])
    assert await writer.drain_all() == 0
    assert await UsageRecord.objects.filter(request_id=event.request_id).acount() == 1
    await writer.close()


async def test_redis_down_spools_to_disk_then_writer_replays(stream, tmp_path):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    buffer = RedisStreamBuffer(dead, stream=stream, spool_dir=tmp_path)
    events = [make_event() for _ in range(40)]
    started = time.monotonic()
    for event in events:
        await buffer.put(event)  # returns once fsync'd to the spool
    assert time.monotonic() - started < 2.0
    (part,) = tmp_path.glob("usage-*.part")
    assert len(part.read_bytes().splitlines()) == 40

    writer = UsageWriter(buffer, batch_size=500)
    # The stream is unreachable too; the writer still replays the spool into the database.
    assert await writer.drain_all() == 40
    assert await UsageRecord.objects.acount() == 40
    assert not list(tmp_path.glob("usage-*"))
    await writer.close()


async def test_poison_entry_is_set_aside_not_blocking(redis_url, stream, tmp_path):
    buffer = RedisStreamBuffer(redis_url, stream=stream, spool_dir=tmp_path)
    client = redis.asyncio.Redis.from_url(redis_url)
    await client.xadd(stream, {b"e": b"{not json"})
    await buffer.put(make_event())
    writer = UsageWriter(buffer)
    assert await writer.drain_all() == 1
    letters = [letter async for letter in UsageDeadLetter.objects.all()]
    assert [letter.payload for letter in letters] == ["{not json"]
    assert letters[0].error.startswith("unreadable event")
    assert await buffer.pending_count() == 0
    await writer.close()
    await client.aclose()
