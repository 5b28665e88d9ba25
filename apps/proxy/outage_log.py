"""Logging for a dependency that is down: one line when it goes, one when it is back.

Background loops retry every second or two while the database (or Redis) is away; logging
each failed attempt with its chained traceback buried everything else in the log. An
`OutageLog` turns that into a line when the outage starts, a summary every `summary_every`
seconds while it lasts, and a line when it ends. Callers say what they did meanwhile
(`note("served from the mirror")`) and the summary counts it.

Not thread-safe: each instance is used from one event loop.
"""

import logging
import time
from collections import Counter
from collections.abc import Callable

from django.db import DatabaseError
from redis.exceptions import RedisError

# A store being unreachable, as opposed to a bug: those get no traceback. Anything else gets
# one, but only on the line that opens the outage, not on every retry.
STORE_ERRORS: tuple[type[BaseException], ...] = (DatabaseError, RedisError, OSError, TimeoutError)

SUMMARY_EVERY = 60.0


def describe(exc: BaseException) -> str:
    """`OperationalError: connection failed: ...`: the class and first line, for one log line."""
    lines = str(exc).strip().splitlines()
    first = lines[0].strip()[:200] if lines else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class OutageLog:
    """State-change logging for one dependency of one worker (see the module docstring)."""

    def __init__(
        self,
        name: str,
        *,
        logger: logging.Logger,
        consequence: str = "",
        summary_every: float = SUMMARY_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.consequence = consequence
        self.summary_every = summary_every
        self._logger = logger
        self._clock = clock
        self._down_since: float | None = None
        self._last_line = 0.0
        self._failures = 0
        self._counts: Counter[str] = Counter()

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def failed(self, exc: BaseException) -> None:
        """An attempt failed: the first one opens the outage and is logged, later ones count."""
        now = self._clock()
        if self._down_since is None:
            self._down_since = self._last_line = now
            self._failures = 1
            self._counts.clear()
            consequence = f"; {self.consequence}" if self.consequence else ""
            self._logger.error(
                "%s unavailable: %s%s",
                self.name,
                describe(exc),
                consequence,
                exc_info=None if isinstance(exc, STORE_ERRORS) else exc,
            )
            return
        self._failures += 1
        self._maybe_summarise(now)

    def note(self, outcome: str) -> None:
        """Count something done despite the outage, for the summary (ignored when up)."""
        if self._down_since is None:
            return
        self._counts[outcome] += 1
        self._maybe_summarise(self._clock())

    def ok(self) -> None:
        """An attempt succeeded: closes the outage, if there was one, with a last line."""
        if self._down_since is None:
            return
        elapsed = self._clock() - self._down_since
        self._logger.warning("%s recovered after %.1f s (%s)", self.name, elapsed, self._tally())
        self._down_since = None

    def _maybe_summarise(self, now: float) -> None:
        if self._down_since is None or now - self._last_line < self.summary_every:
            return
        self._last_line = now
        self._logger.warning(
            "%s still unavailable after %.0f s: %s",
            self.name,
            now - self._down_since,
            self._tally(),
        )

    def _tally(self) -> str:
        parts = [f"{self._failures} failed attempts"]
        parts += [f"{count} {outcome}" for outcome, count in self._counts.items()]
        return ", ".join(parts)
