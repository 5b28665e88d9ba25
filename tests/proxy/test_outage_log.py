"""OutageLog: one line when a dependency goes down, a summary while it stays down, one when it
is back; never a line per failed attempt."""

import logging

import pytest
from django.db import OperationalError

from apps.proxy.outage_log import OutageLog, describe

pytestmark = pytest.mark.embedded

LOGGER = "tests.outage_log"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def outage(clock) -> OutageLog:
    return OutageLog(
        "key store",
        logger=logging.getLogger(LOGGER),
        consequence="serving from the mirror",
        summary_every=60.0,
        clock=clock,
    )


def records(caplog) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == LOGGER]


def refused() -> OperationalError:
    return OperationalError("connection failed: port 5432 failed: Connection refused\n\tIs the")


def test_an_outage_is_one_line_when_it_starts_and_one_when_it_ends(outage, clock, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    outage.ok()  # up and staying up: nothing to say
    assert records(caplog) == []

    for _ in range(61):  # a loop retrying every second, for a minute
        outage.failed(refused())
        outage.note("served from the mirror")
        clock.now += 1.0
    outage.note("refused")
    assert outage.down
    first, summary = records(caplog)
    assert first.levelno == logging.ERROR
    assert first.getMessage() == (
        "key store unavailable: OperationalError: connection failed: port 5432 failed: "
        "Connection refused; serving from the mirror"
    )
    assert first.exc_info is None  # an unreachable store is not a bug: no traceback
    assert summary.levelno == logging.WARNING
    assert summary.getMessage() == (
        "key store still unavailable after 60 s: 61 failed attempts, 60 served from the mirror"
    )
    caplog.clear()

    clock.now += 2.5
    outage.ok()
    outage.ok()
    (recovered,) = records(caplog)
    assert recovered.levelno == logging.WARNING
    assert recovered.getMessage() == (
        "key store recovered after 63.5 s "
        "(61 failed attempts, 61 served from the mirror, 1 refused)"
    )
    assert not outage.down


def test_a_summary_every_interval_while_down(outage, clock, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    outage.failed(refused())
    for _ in range(3 * 60 * 2):  # three minutes, a lookup every half second
        clock.now += 0.5
        outage.note("served from the mirror")
    messages = [record.getMessage() for record in records(caplog)]
    assert len(messages) == 4
    assert messages[1:] == [
        f"key store still unavailable after {s} s: 1 failed attempts, {n} served from the mirror"
        for s, n in ((60, 120), (120, 240), (180, 360))
    ]


def test_counts_start_again_with_the_next_outage(outage, clock, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    outage.failed(refused())
    outage.note("refused")
    outage.ok()
    outage.note("refused")  # while up: not counted anywhere
    clock.now += 10
    outage.failed(refused())
    clock.now += 1
    outage.ok()
    messages = [record.getMessage() for record in records(caplog)]
    assert len(messages) == 4
    assert messages[2].startswith("key store unavailable: ")
    assert messages[3] == "key store recovered after 1.0 s (1 failed attempts)"


def test_an_unexpected_error_keeps_its_traceback_on_the_first_line_only(outage, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    for _ in range(3):
        try:
            {}["missing"]
        except KeyError as exc:
            outage.failed(exc)
    (line,) = records(caplog)
    assert line.getMessage().startswith("key store unavailable: KeyError: 'missing'")
    assert line.exc_info is not None and line.exc_info[0] is KeyError


def test_describe_keeps_one_short_line():
    assert describe(refused()) == (
        "OperationalError: connection failed: port 5432 failed: Connection refused"
    )
    assert describe(TimeoutError()) == "TimeoutError"
    assert len(describe(ValueError("x" * 1000))) == len("ValueError: ") + 200
