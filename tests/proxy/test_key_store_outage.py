"""A gateway worker started while PostgreSQL is down admits the keys of the Redis key mirror.

PostgreSQL sits behind a TCP relay that the test cuts; Redis, the upstream simulator and the
gateway processes are real. The second gateway process is the "respawned worker": it never
saw the database, so all it knows comes from Redis.
"""

import asyncio
import dataclasses
import os
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from decimal import Decimal

import httpx
import pytest
import redis
from asgiref.sync import sync_to_async
from django.db import connection, connections

from apps.accounts.services import api_key_revoke, team_update
from apps.billing.models import ModelPrice
from apps.proxy import key_mirror
from apps.proxy.auth import KEY_INFO_VERSION, key_info_dumps, key_info_from_row, key_info_loads
from apps.proxy.catalog import SNAPSHOT_KEY, Catalog
from apps.proxy.pricing import Price
from tests import factories
from tests.proxy.conftest import GatewayServer, start_gateway, stop_gateway
from tests.proxy.helpers import declare_model
from tests.proxy.simulator_server import start_simulator
from tests.proxy.tcp_proxy import TcpProxy

MODEL = "mirror-chat"
# "2026-12-02 00:43:10,105 ERROR apps.proxy.auth key store unavailable: ..."
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ (?P<level>[A-Z]+) (?P<message>.*)$")


@pytest.fixture
def relay(django_db_setup) -> Iterator[TcpProxy]:
    conf = connection.settings_dict
    tcp = TcpProxy(conf["HOST"], int(conf["PORT"]))
    yield tcp
    tcp.close()


@pytest.fixture
def upstream_url() -> Iterator[str]:
    # Its own server: the gateways come and go, the deployments must keep answering.
    base_url, stop = start_simulator()
    yield f"{base_url}/v1"
    stop()


@pytest.fixture
def mirror() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    yield client
    client.close()


def through(tcp: TcpProxy) -> str:
    conf = connection.settings_dict
    return f"postgres://{conf['USER']}@127.0.0.1:{tcp.port}/{conf['NAME']}"


def chat(server: GatewayServer, secret: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hello"}]},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=15,
    )


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def app_log_lines(log: str) -> list[tuple[str, str]]:
    """(level, message) of the application's log lines, uvicorn's own "INFO:" lines left out."""
    return [
        (match["level"], match["message"])
        for line in log.splitlines()
        if (match := LOG_LINE.match(line))
    ]


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_worker_started_during_a_database_outage(relay, upstream_url, mirror, user):
    known_row, known = factories.make_key(user=user)
    revoked_row, revoked = factories.make_key(user=user)
    _, never_used = factories.make_key(user=user)
    database_url = through(relay)

    first = start_gateway({"DATABASE_URL": database_url})
    try:
        declare_model(MODEL, upstream_url, "demo-chat")
        first.wait_for_model(known, MODEL)
        assert chat(first, known).status_code == 200
        assert chat(first, revoked).status_code == 200
        # The worker mirrors a key after reading it from the database, in the background.
        wait_until(
            lambda: (
                mirror.exists(
                    key_mirror.entry_key(known_row.key_hash),
                    key_mirror.entry_key(revoked_row.key_hash),
                )
                == 2
            ),
            "both keys in the mirror",
        )
        api_key_revoke(key=revoked_row, actor=user)
    finally:
        stop_gateway(first)

    record = mirror.get(key_mirror.entry_key(known_row.key_hash))
    assert known.encode() not in record  # the hash names the entry; no secret in it
    assert key_info_loads(record).id == known_row.id
    assert 0 < mirror.ttl(key_mirror.entry_key(known_row.key_hash)) <= 86_400
    # The revocation rewrote the mirrored state, it did not only tell running workers.
    assert key_info_loads(mirror.get(key_mirror.entry_key(revoked_row.key_hash))).revoked_ts

    relay.cut()
    respawned = start_gateway({"DATABASE_URL": database_url})
    try:
        response = chat(respawned, known)
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"]

        response = chat(respawned, revoked)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "api_key_revoked"

        response = chat(respawned, never_used)
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "key_store_unavailable"
        assert set(error) == {"message", "type", "param", "code"}

        # About five seconds of traffic with the database away; KEY_CACHE_TTL is 1 s here, so
        # the worker keeps trying the database and falling back.
        outage_until = time.monotonic() + 5
        while time.monotonic() < outage_until:
            assert chat(respawned, known).status_code == 200
            assert chat(respawned, never_used).status_code == 503
            time.sleep(0.2)

        outage_log = respawned.log()
        assert "model catalog loaded from the Redis snapshot: " in outage_log
        assert "Traceback" not in outage_log, outage_log[-3000:]
        lines = app_log_lines(outage_log)
        key_store = [message for _, message in lines if "key store" in message]
        assert len(key_store) == 1, key_store
        assert "key store unavailable: OperationalError" in key_store[0]
        # One line per state change of each background loop: none is repeated.
        problems = [message for level, message in lines if level in ("WARNING", "ERROR")]
        assert len(problems) == len(set(problems)), problems
        assert len(problems) <= 8, problems

        relay.restore()
        # The first lookup to reach the database again ends the outage.
        wait_until(lambda: chat(respawned, never_used).status_code == 200, "the database")
        wait_until(lambda: "key store recovered after" in respawned.log(), "recovery line")
        recovered = [m for _, m in app_log_lines(respawned.log()) if "key store recovered" in m]
        assert len(recovered) == 1
        assert re.search(r"recovered after \d+\.\d s \(\d+ failed attempts, \d+ ", recovered[0])
        assert "served from the mirror" in recovered[0]
        assert chat(respawned, revoked).status_code == 401
    finally:
        if relay.server is None:  # the assertions stopped mid-outage
            relay.restore()
        stop_gateway(respawned)


# --- The mirror's pieces ------------------------------------------------------------------


@pytest.mark.embedded
def test_a_key_info_comes_back_from_the_mirror_equal(api_key):
    row, secret = api_key
    info = key_info_from_row(row)
    record = key_info_dumps(info)
    assert secret.encode() not in record
    assert key_info_loads(record) == info
    assert isinstance(key_info_loads(record).scopes, frozenset)


@pytest.mark.embedded
def test_records_this_code_cannot_read_count_as_absent(api_key):
    info = key_info_from_row(api_key[0])
    other_version = key_info_dumps(info).replace(
        f'"version":{KEY_INFO_VERSION}'.encode(), f'"version":{KEY_INFO_VERSION + 1}'.encode()
    )
    assert key_info_loads(other_version) is None
    assert key_info_loads(b'{"version": 1, "info": {"id": 1}}') is None
    assert key_info_loads(b"not json") is None
    assert key_info_loads(None) is None


@pytest.mark.embedded
async def test_embedded_mode_has_no_mirror(settings):
    settings.REDIS_URL = ""
    assert key_mirror.redis_client() is None
    assert await key_mirror.read("0" * 64) is None
    pending = set(key_mirror._tasks)
    key_mirror.remember("0" * 64, b"{}", time.monotonic())
    assert key_mirror._tasks == pending  # no write scheduled


@pytest.mark.services
@pytest.mark.django_db
async def test_a_late_worker_write_never_replaces_the_state_the_portal_wrote(api_key, mirror):
    row, _ = api_key
    valid = key_info_from_row(row)
    revoked = key_info_dumps(dataclasses.replace(valid, revoked_ts=time.time()))
    entry = key_mirror.entry_key(row.key_hash)
    # The portal revokes the key while a worker's read from before the commit is in flight.
    with mirror.pipeline(transaction=False) as pipe:
        key_mirror.queue_portal_writes(pipe, {row.key_hash: revoked})
        pipe.execute()
    await key_mirror._write(row.key_hash, key_info_dumps(valid), time.monotonic())
    assert mirror.get(entry) == revoked

    # Past the guard, what a worker read is mirrored again (with the mirror's TTL)...
    mirror.delete(key_mirror.guard_key(row.key_hash))
    await key_mirror._write(row.key_hash, key_info_dumps(valid), time.monotonic())
    assert mirror.get(entry) == key_info_dumps(valid)
    assert mirror.ttl(entry) > 86_000
    # ...unless its read began so long ago that it could have outlived a guard.
    started = time.monotonic() - key_mirror.WRITE_DEADLINE - 1
    await key_mirror._write(row.key_hash, revoked, started)
    assert mirror.get(entry) == key_info_dumps(valid)
    mirror.delete(entry)


@pytest.mark.services
@pytest.mark.django_db
async def test_a_worker_writes_a_key_once_per_cache_ttl(api_key, mirror, settings):
    settings.KEY_CACHE_TTL = 30
    row, _ = api_key
    entry = key_mirror.entry_key(row.key_hash)
    first = key_info_dumps(key_info_from_row(row))
    pending = set(key_mirror._tasks)
    key_mirror.remember(row.key_hash, first, time.monotonic())
    await asyncio.gather(*(key_mirror._tasks - pending))
    assert mirror.get(entry) == first
    mirror.delete(entry)
    key_mirror.remember(row.key_hash, first, time.monotonic())  # another miss, same TTL
    assert key_mirror._tasks - pending == set()
    assert mirror.get(entry) is None


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_a_team_change_rewrites_the_mirror_of_its_keys(team, api_key, mirror):
    row, _ = api_key
    team_update(team=team, actor=None, required_tag_keys=["project"])
    info = key_info_loads(mirror.get(key_mirror.entry_key(row.key_hash)))
    assert info.required_tag_keys == ("project",)
    assert mirror.ttl(key_mirror.guard_key(row.key_hash)) > 0


def make_prices() -> None:
    ModelPrice.objects.create(
        model_name="snapshot-upstream",
        input_cost_per_token=Decimal("0.0000025"),
        output_cost_per_token=Decimal("0.00001"),
        cached_input_cost_per_token=Decimal("0.00000125"),
        cache_write_cost_per_token=Decimal("0.000003125"),
        effective_from=date(2025, 1, 1),
    )
    ModelPrice.objects.create(
        model_name="snapshot-upstream",
        input_cost_per_token=Decimal("0.000003"),
        output_cost_per_token=Decimal("0.000012"),
        effective_from=date(2025, 6, 1),
    )


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
async def test_the_catalog_snapshot_rebuilds_the_same_catalog(mirror):
    try:
        await sync_to_async(declare_model)(
            "snapshot-chat",
            "http://127.0.0.1:9/v1",
            "demo-chat",
            "demo-chat-2",
            prices={
                "input_cost_per_token": "0.0000025",
                "output_cost_per_token": "0.00001",
                "cache_write_cost_per_token": "0.000003125",
            },
        )
        await sync_to_async(make_prices)()
        from_database = Catalog()
        assert await from_database.refresh(force=True)
        assert b"snapshot-chat" in mirror.get(SNAPSHOT_KEY)

        from_snapshot = Catalog()
        assert await from_snapshot._load_snapshot()
        assert from_snapshot.models == from_database.models
        entry = from_snapshot.models["snapshot-chat"]
        assert [d.upstream_model for d in entry.deployments] == ["demo-chat", "demo-chat-2"]
        assert entry.deployments[0].input_cost_per_token == Decimal("0.0000025")
        assert entry.deployments[0].cache_write_cost_per_token == Decimal("0.000003125")
        march, july = datetime(2025, 3, 1, tzinfo=UTC), datetime(2025, 7, 1, tzinfo=UTC)
        assert from_snapshot.prices.price_at("snapshot-upstream", march) == Price(
            date(2025, 1, 1),
            Decimal("0.0000025"),
            Decimal("0.00001"),
            Decimal("0.00000125"),
            Decimal("0.000003125"),
        )
        assert from_snapshot.prices.price_at("snapshot-upstream", july) == Price(
            date(2025, 6, 1), Decimal("0.000003"), Decimal("0.000012"), None
        )
        assert from_database.prices.price_at("snapshot-upstream", july) == Price(
            date(2025, 6, 1), Decimal("0.000003"), Decimal("0.000012"), None
        )
        assert len(from_snapshot.prices) == len(from_database.prices)
    finally:
        # The catalog read the database in a worker thread; close its connection for the flush.
        await sync_to_async(connections.close_all)()
