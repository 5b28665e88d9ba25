"""ASGI entry point.

A small dispatcher sits in front of Django: `/v1` goes straight to the proxy's plain ASGI
app (no Django middleware on the hot path), `/metrics` to the Prometheus endpoint,
`/simulator` to the built-in upstream simulator, everything else to the Django portal.
Django never sees those three, so the dispatcher applies its ALLOWED_HOSTS check to them
(`gateway_portal.security.host_allowed`, cached per host value). The dispatcher also runs
the lifespan: it loads the model catalog, starts and drains the usage writer, listens for
key invalidations and flushes keys' last-used times.
"""

import asyncio
import gc
import logging
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_portal.settings")

django_app = get_asgi_application()

from django.conf import settings  # noqa: E402  (Django must be set up first)

from apps.proxy import key_events, metrics, upstream  # noqa: E402
from apps.proxy.app import app as proxy_app  # noqa: E402
from apps.proxy.catalog import catalog  # noqa: E402
from apps.proxy.health import board as health_board  # noqa: E402
from apps.proxy.outage_log import OutageLog  # noqa: E402
from apps.proxy.simulator.app import create_app as create_simulator  # noqa: E402
from apps.quotas.engine import get_quota_engine  # noqa: E402
from apps.usage.writer import UsageWriter  # noqa: E402
from gateway_portal.loop_lag import watch_loop_lag  # noqa: E402
from gateway_portal.security import host_allowed, send_invalid_host  # noqa: E402

logger = logging.getLogger("tollgate.asgi")
simulator_app = create_simulator(prefix="/simulator") if settings.SIMULATOR_MOUNTED else None
usage_writer = UsageWriter()
_background: list[asyncio.Task] = []
_writer_started = asyncio.Event()
_last_used_flusher: list[asyncio.Task] = []


async def _refresh_quotas_forever() -> None:
    """Quota config changes reach every worker within QUOTA_REFRESH_SECONDS (one query)."""
    engine = get_quota_engine()
    # A database outage is logged when it starts, each minute and when it ends, not per try.
    outage = OutageLog(
        "quota config refresh", logger=logger, consequence="keeping the current rules"
    )
    while True:
        try:
            if await engine.refresh():
                logger.info("quota config version %s active", engine.version)
        except Exception as exc:  # keep enforcing the last good rules
            outage.failed(exc)
        else:
            outage.ok()
        await asyncio.sleep(settings.QUOTA_REFRESH_SECONDS)


async def _lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await catalog.refresh(force=True)
            except Exception:  # an unmigrated database must not stop the portal from serving
                logger.exception("could not load the model catalog at startup")
            catalog.start()
            health_board.start()  # shares breaker and latency state through Redis
            loop = asyncio.get_running_loop()
            _background.append(loop.create_task(_refresh_quotas_forever()))
            if settings.REDIS_URL:
                _background.append(loop.create_task(key_events.listen_forever()))
            else:  # embedded mode: the CLI and other workers write the key change log
                _background.append(loop.create_task(key_events.poll_changes_forever()))
            _last_used_flusher.append(loop.create_task(key_events.flush_last_used_forever()))
            _background.append(loop.create_task(watch_loop_lag()))
            if settings.USAGE_WRITER_IN_PROCESS or not settings.REDIS_URL:
                await usage_writer.start()
                _writer_started.set()
            if settings.GC_FREEZE_AT_STARTUP:
                # Django, the catalog and the libraries leave a few hundred thousand objects
                # that live as long as the worker; frozen, the collector stops walking them
                # in every full collection, which was the gateway's latency tail
                # (bench/proxy_bench.py: c=16 added p99 28.6 -> 9.4 ms).
                gc.collect()
                gc.freeze()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            for task in _background + _last_used_flusher:
                task.cancel()
            try:
                await key_events.flush_last_used()
            except Exception:  # shutting down: nothing else to do with them
                logger.exception("could not write last-used times at shutdown")
            if _writer_started.is_set():
                await usage_writer.stop()
            await catalog.stop()
            await health_board.stop()
            await upstream.close()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def application(scope, receive, send) -> None:
    if scope["type"] == "http":
        path = scope["path"]
        if path.startswith("/v1/"):
            app = proxy_app
        elif path == "/metrics":
            app = metrics.endpoint
        elif simulator_app is not None and path.startswith("/simulator/"):
            app = simulator_app
        else:
            app = None
        if app is not None:
            # Django checks ALLOWED_HOSTS only for what it serves itself.
            if host_allowed(scope):
                await app(scope, receive, send)
            else:
                await send_invalid_host(scope, send)
            return
    elif scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    await django_app(scope, receive, send)
