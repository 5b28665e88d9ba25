"""Nothing is lost: SIGKILLed workers, a database outage, clients that disconnect mid-stream."""

import os
import signal
import time

import httpx
import pytest
from django.db import connection
from openai import OpenAI

from apps.usage.models import UsageRecord
from apps.usage.writer import drain_all_sync
from tests import factories
from tests.proxy.conftest import start_gateway, stop_gateway
from tests.proxy.helpers import declare_model, wait_for_usage
from tests.proxy.tcp_proxy import TcpProxy

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "Tell me a long story about a lighthouse."}]


def test_sigkilled_worker_loses_no_answered_request(django_db_setup, user):
    # The writer of this gateway effectively never flushes: rows must survive in Redis.
    server = start_gateway({"USAGE_FLUSH_INTERVAL": "3600"})
    try:
        _, secret = factories.make_key(user=user)
        declare_model("kill-chat", server.simulator_url, "demo-chat")
        server.wait_for_model(secret, "kill-chat")
        client = OpenAI(base_url=f"{server.url}/v1", api_key=secret, max_retries=0)
        request_ids = []
        for index in range(25):
            raw = client.chat.completions.with_raw_response.create(
                model="kill-chat",
                messages=[{"role": "user", "content": f"question {index}"}],
                stream=index % 2 == 0,
            )
            request_ids.append(raw.headers["x-request-id"])
            raw.parse() if index % 2 else list(raw.parse())
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(10)
        assert UsageRecord.objects.filter(request_id__in=request_ids).count() < 25
        drain_all_sync()  # another writer picks up what the dead worker left in Redis
        assert UsageRecord.objects.filter(request_id__in=request_ids).count() == 25
    finally:
        stop_gateway(server)


def test_database_outage_keeps_rows_then_writes_them_once(django_db_setup, user):
    settings_dict = connection.settings_dict
    tcp = TcpProxy(settings_dict["HOST"], int(settings_dict["PORT"]))
    database_url = (
        f"postgres://{settings_dict['USER']}@127.0.0.1:{tcp.port}/{settings_dict['NAME']}"
    )
    server = start_gateway({"DATABASE_URL": database_url, "KEY_CACHE_TTL": "0.5"})
    try:
        _, secret = factories.make_key(user=user)
        declare_model("outage-chat", server.simulator_url, "demo-chat")
        server.wait_for_model(secret, "outage-chat")
        client = OpenAI(base_url=f"{server.url}/v1", api_key=secret, max_retries=0)
        client.chat.completions.create(model="outage-chat", messages=MESSAGES)  # warm the key
        tcp.cut()
        time.sleep(1.0)  # past the key cache TTL: the gateway must fall back, not fail
        request_ids = []
        for _ in range(10):
            raw = client.chat.completions.with_raw_response.create(
                model="outage-chat", messages=MESSAGES
            )
            assert raw.http_response.status_code == 200
            request_ids.append(raw.headers["x-request-id"])
        time.sleep(1.0)
        assert UsageRecord.objects.filter(request_id__in=request_ids).count() == 0
        tcp.restore()
        deadline = time.monotonic() + 30
        while (
            UsageRecord.objects.filter(request_id__in=request_ids).count() < 10
            and time.monotonic() < deadline
        ):
            time.sleep(0.2)
        written = UsageRecord.objects.filter(request_id__in=request_ids).count()
        assert written == 10, server.log()[-3000:]
    finally:
        stop_gateway(server)
        tcp.close()


@pytest.mark.embedded
def test_client_disconnect_mid_stream_is_billed_for_what_was_produced(gateway, user):
    _, secret = factories.make_key(user=user)
    declare_model("trickle", gateway.simulator_url, "slow-stream")
    gateway.wait_for_model(secret, "trickle")
    received = 0
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        json={"model": "trickle", "messages": MESSAGES, "stream": True},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    ) as response:
        request_id = response.headers["x-request-id"]
        for line in response.iter_lines():
            if line.startswith("data: ") and '"content"' in line:
                received += 1
            if received >= 5:
                break
    row = wait_for_usage(request_id, timeout=20)
    assert row.client_disconnected
    assert 0 < row.output_tokens < 400
    assert row.is_stream and row.status_code == 200
