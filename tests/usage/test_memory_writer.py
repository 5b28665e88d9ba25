"""Embedded mode: the in-process queue, the writer loop, idempotency and the spool."""

import asyncio
import os

import pytest

from apps.usage.buffer import MemoryBuffer, SpoolFile
from apps.usage.models import UsageRecord
from apps.usage.writer import UsageWriter, drain_all_sync, insert_events
from tests.usage.helpers import await_for, make_event

pytestmark = [pytest.mark.embedded, pytest.mark.django_db(transaction=True)]


async def test_writer_loop_drains_in_batches_and_stop_drains_the_rest(tmp_path):
    buffer = MemoryBuffer(spool_dir=tmp_path)
    writer = UsageWriter(buffer, batch_size=100, flush_interval=0.05)
    await writer.start()
    events = [make_event() for _ in range(450)]
    for event in events:
        await buffer.put(event)

    async def all_written() -> bool:
        return await UsageRecord.objects.acount() == 450

    assert await await_for(all_written)
    # Rows put just before shutdown are written by stop(), not lost.
    late = [make_event() for _ in range(30)]
    for event in late:
        await buffer.put(event)
    await writer.stop()
    assert await UsageRecord.objects.acount() == 480
    assert len(buffer) == 0


def test_sync_put_and_drain_all_sync(tmp_path):
    buffer = MemoryBuffer(spool_dir=tmp_path)
    for _ in range(3):
        buffer.put_nowait(make_event())
    assert drain_all_sync(buffer) == 3
    assert UsageRecord.objects.count() == 3


def test_same_request_id_twice_is_one_row(tmp_path):
    buffer = MemoryBuffer(spool_dir=tmp_path)
    event = make_event()
    buffer.put_nowait(event)
    buffer.put_nowait(event)  # in the same batch
    assert drain_all_sync(buffer) == 1
    buffer.put_nowait(event)  # and replayed later
    assert drain_all_sync(buffer) == 0
    assert insert_events([event, event]) == 0
    assert UsageRecord.objects.filter(request_id=event.request_id).count() == 1


def test_spilled_queue_is_replayed_from_the_spool(tmp_path):
    buffer = MemoryBuffer(spool_dir=tmp_path)
    events = [make_event() for _ in range(5)]
    for event in events:
        buffer.put_nowait(event)
    # What stop() does when the database is down: memory would die with the process.
    assert asyncio.run(buffer.spill()) == 5
    files = list(tmp_path.glob("usage-*.jsonl"))
    assert len(files) == 1 and len(files[0].read_bytes().splitlines()) == 5

    # A new process's writer replays the spool and deletes the file after the commit.
    assert drain_all_sync(MemoryBuffer(spool_dir=tmp_path)) == 5
    assert not list(tmp_path.glob("usage-*"))
    assert set(UsageRecord.objects.values_list("request_id", flat=True)) == {
        e.request_id for e in events
    }


def test_spool_respects_a_live_owner_and_adopts_a_dead_ones_file(tmp_path):
    owner = SpoolFile(tmp_path)
    owner.append([make_event(), make_event()])
    replayer = SpoolFile(tmp_path)
    # The owner still holds its flock: the .part file is not touched.
    assert replayer.sealed_files() == []
    # The owner dies without sealing (as on SIGKILL, the kernel drops its lock).
    os.close(owner._fd)
    owner._fd = None
    sealed = replayer.sealed_files()
    assert len(sealed) == 1 and len(replayer.read(sealed[0]).events) == 2


def test_spool_replay_skips_a_torn_last_line(tmp_path):
    spool = SpoolFile(tmp_path)
    spool.append([make_event()])
    spool.close()
    (path,) = tmp_path.glob("usage-*.jsonl")
    with path.open("ab") as handle:
        handle.write(make_event().to_json()[:40])  # crash mid-write: never acknowledged
    assert len(spool.read(path).events) == 1


def test_an_unreadable_spool_line_is_dead_lettered_and_the_rest_written(tmp_path):
    from apps.usage.models import UsageDeadLetter

    spool = SpoolFile(tmp_path)
    good = [make_event(), make_event()]
    spool.append(good[:1])
    spool.close()
    (path,) = tmp_path.glob("usage-*.jsonl")
    with path.open("ab") as handle:
        handle.write(b'{"not": "an event"}\n' + good[1].to_json() + b"\n")
    assert drain_all_sync(MemoryBuffer(spool_dir=tmp_path)) == 2
    assert not list(tmp_path.glob("usage-*"))
    (letter,) = UsageDeadLetter.objects.all()
    assert letter.payload == '{"not": "an event"}'
    assert letter.request_id == f"unreadable_{path.name}:2"[:64]


def test_a_held_region_name_never_leaves_the_held_directory(tmp_path):
    writer = UsageWriter(MemoryBuffer(spool_dir=tmp_path))
    held = tmp_path / "held"
    assert writer._held_spool("eu").directory == held / "eu"
    # A region name comes with the event; one that is no region name gets a fixed folder.
    for name in ("../../etc", "EU/x", "", "a" * 40):
        assert writer._held_spool(name).directory == held / "_unnamed"
