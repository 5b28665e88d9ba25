"""SIGTERM to a gateway instance (the Procfile's `web` line, two workers): new connections are
refused at once, a stream in flight runs to its end, and its usage row is in the database by
the time the process has exited (the lifespan shutdown drains the usage writer)."""

import os
import signal
import threading
import time

import httpx
import pytest

from apps.usage.models import UsageRecord
from tests import factories
from tests.deploy.conftest import kill_instance, start_instance
from tests.proxy.conftest import stop_gateway
from tests.proxy.helpers import declare_model
from tests.proxy.simulator_server import running_simulator

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services]

# 100 tokens at 40 a second: a stream of about 2.5 s.
KNOBS = {"drain-stream": {"tokens_per_second": 40, "output_tokens": 100}}


class StreamReader(threading.Thread):
    """Reads one streamed chat completion; `first_chunk` is set when content arrives."""

    def __init__(self, url: str, secret: str, model: str) -> None:
        super().__init__(daemon=True)
        self.url, self.secret, self.model = url, secret, model
        self.first_chunk = threading.Event()
        self.lines: list[str] = []
        self.request_id = ""
        self.status = 0
        self.finished_at = 0.0
        self.error: Exception | None = None

    def run(self) -> None:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": "Tell me a story."}],
            "stream": True,
        }
        try:
            with httpx.stream(
                "POST",
                f"{self.url}/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {self.secret}"},
                timeout=30,
            ) as response:
                self.status = response.status_code
                self.request_id = response.headers.get("x-request-id", "")
                for line in response.iter_lines():
                    if line:
                        self.lines.append(line)
                        if '"content"' in line:
                            self.first_chunk.set()
        except httpx.HTTPError as exc:
            self.error = exc
        finally:
            self.finished_at = time.monotonic()
            self.first_chunk.set()


def test_sigterm_refuses_new_connections_and_lets_the_stream_finish_and_bill(user):
    secret = factories.make_key(user=user)[1]
    with running_simulator(model_knobs=KNOBS) as upstream:
        # The periodic flush never comes: only the shutdown drain can write the row.
        server = start_instance({"USAGE_FLUSH_INTERVAL": "3600", "DRAIN_SECONDS": "10"})
        try:
            declare_model("drain-chat", f"{upstream}/v1", "drain-stream")
            server.wait_for_model(secret, "drain-chat")
            reader = StreamReader(server.url, secret, "drain-chat")
            reader.start()
            assert reader.first_chunk.wait(15) and reader.error is None
            signalled = time.monotonic()
            os.kill(server.process.pid, signal.SIGTERM)
            time.sleep(0.8)  # the supervisor handles signals every 0.5 s
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"{server.url}/healthz", timeout=5)
            reader.join(30)
            assert server.process.wait(30) == 0
            exited = time.monotonic()
        finally:
            stop_gateway(server)
    assert reader.error is None and reader.status == 200
    assert reader.lines[-1] == "data: [DONE]"
    assert reader.finished_at - signalled > 1.0  # it kept streaming well after SIGTERM
    assert exited >= reader.finished_at
    # Written before the process exited: the drain, not a later writer.
    row = UsageRecord.objects.get(request_id=reader.request_id)
    assert (row.status_code, row.is_stream, row.output_tokens) == (200, True, 100)
    assert not row.client_disconnected


def test_a_stream_longer_than_the_drain_limit_is_cut_at_the_limit(user):
    secret = factories.make_key(user=user)[1]
    # 400 tokens at 40 a second: 10 s, against a 2 s drain limit.
    knobs = {"drain-long": {"tokens_per_second": 40, "output_tokens": 400}}
    with running_simulator(model_knobs=knobs) as upstream:
        server = start_instance({"DRAIN_SECONDS": "2"})
        try:
            declare_model("drain-long-chat", f"{upstream}/v1", "drain-long")
            server.wait_for_model(secret, "drain-long-chat")
            reader = StreamReader(server.url, secret, "drain-long-chat")
            reader.start()
            assert reader.first_chunk.wait(15)
            signalled = time.monotonic()
            os.kill(server.process.pid, signal.SIGTERM)
            server.process.wait(20)
            exited = time.monotonic()
            reader.join(20)
        finally:
            kill_instance(server)
            stop_gateway(server)
    # Cut at the limit (not at once, not at the stream's end): the limit, plus the usage
    # writer's drain and the process's own exit.
    assert 1.5 < reader.finished_at - signalled < 2 + 6
    assert exited - signalled < 2 + 6, exited - signalled
    # The client got part of the answer and then the end of the connection, not [DONE].
    assert reader.status == 200 and isinstance(reader.error, httpx.RemoteProtocolError)
    assert 0 < len(reader.lines) < 400 and "data: [DONE]" not in reader.lines
    # The relay bills what the client received before the cancellation goes on.
    produced = UsageRecord.objects.filter(request_id=reader.request_id).first()
    assert produced is not None, "a stream cut at the drain limit left no usage row"
    assert produced.status_code == 200 and produced.output_tokens > 0
    assert produced.error_type == "stream_cancelled"
