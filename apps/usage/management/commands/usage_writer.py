"""`python manage.py usage_writer [--once]`: a standalone usage writer.

Gateway processes already run a writer each; a standalone one adds drain capacity or
replays spool files while the gateway is stopped. In embedded mode (no Redis) it can only
replay spool files, since the in-process queue lives in the gateway process.
"""

import asyncio
import signal

from django.conf import settings
from django.core.management import BaseCommand, CommandError
from django.db import DatabaseError

from apps.usage.buffer import (
    MemoryBuffer,
    RedisStreamBuffer,
    UsageBuffer,
    get_usage_buffer,
    usage_settings,
)
from apps.usage.writer import UsageWriter, drain_all_sync


class Command(BaseCommand):
    help = "Drain buffered usage events (Redis stream and spool files) into UsageRecord."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--once", action="store_true", help="drain what is pending, then exit")
        parser.add_argument("--stream", help="Redis stream (default settings.USAGE_STREAM)")
        parser.add_argument("--consumer", help="consumer name in the group (default host-pid)")
        parser.add_argument("--claim-idle-ms", type=int, help="reclaim others' pending after this")
        parser.add_argument(
            "--spool-dir", help="spool directory (default settings.USAGE_SPOOL_DIR)"
        )
        parser.add_argument("--flush-interval", type=float, help="seconds between batches")

    def handle(self, *args, **options) -> None:
        buffer = self._buffer(options)
        writer_options = {}
        if options["flush_interval"] is not None:
            writer_options["flush_interval"] = options["flush_interval"]
        if options["once"]:
            try:
                written = drain_all_sync(buffer, **writer_options)
            except DatabaseError as exc:
                raise CommandError(f"database unavailable, rows left pending: {exc}") from exc
            self.stdout.write(f"{written} usage rows written")
            return
        asyncio.run(self._run(UsageWriter(buffer, **writer_options)))

    def _buffer(self, options) -> UsageBuffer:
        conf = usage_settings()
        if not settings.REDIS_URL:
            return (
                MemoryBuffer(options["spool_dir"]) if options["spool_dir"] else get_usage_buffer()
            )
        overrides = [
            options["stream"],
            options["consumer"],
            options["claim_idle_ms"],
            options["spool_dir"],
        ]
        if all(value is None for value in overrides):
            return get_usage_buffer()
        return RedisStreamBuffer(
            settings.REDIS_URL,
            stream=options["stream"] or conf["stream"],
            spool_dir=options["spool_dir"] or conf["spool_dir"],
            consumer=options["consumer"],
            claim_idle_ms=options["claim_idle_ms"],
        )

    async def _run(self, writer: UsageWriter) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await writer.start()
        self.stdout.write("usage writer running; SIGTERM drains and exits", ending="\n")
        self.stdout.flush()
        await stop.wait()
        await writer.stop()
