"""Reads that fan out to several data regions, each region's part on its own thread.

A read across regions repeats its queries in every region's database. Run one region after
the other, a page waits for each database in turn; run side by side, the waits overlap (the
databases work in parallel while Python merges). Within `parallel_region_reads()` (every
portal request, through `RegionReadsMiddleware`), `read_each_region` hands every region but
the first to a thread of its own for the rest of the block; outside it, or inside a
transaction (a read there must see that transaction's writes, which only its connection
can), the regions are read one after the other on the calling thread.

A thread's database connections are its own: they are opened on first use and closed, on
that thread, when the block ends, so a request's region connections live as long as the
request, as they would on the calling thread.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

from django.db import connections

from .regions import in_region, ledger_aliases

T = TypeVar("T")


class _Readers:
    """One single-thread executor per region, for the length of one block."""

    def __init__(self) -> None:
        self.threads: dict[str, ThreadPoolExecutor] = {}

    def thread(self, region: str) -> ThreadPoolExecutor:
        if region not in self.threads:
            self.threads[region] = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"region-read-{region}"
            )
        return self.threads[region]

    def close(self) -> None:
        for executor in self.threads.values():
            # Queued behind the thread's reads, so it runs on the thread that opened them.
            executor.submit(connections.close_all)
            executor.shutdown(wait=True)
        self.threads.clear()


_readers: contextvars.ContextVar[_Readers | None] = contextvars.ContextVar(
    "tollgate_region_readers", default=None
)


@contextmanager
def parallel_region_reads() -> Iterator[None]:
    """Within the block, `read_each_region` reads the regions side by side."""
    if _readers.get() is not None:
        yield
        return
    readers = _Readers()
    token = _readers.set(readers)
    try:
        yield
    finally:
        _readers.reset(token)
        readers.close()


def _in_transaction() -> bool:
    aliases = {"default", *ledger_aliases()}
    return any(connections[alias].in_atomic_block for alias in aliases)


def read_each_region(names: Sequence[str], read: Callable[[], T]) -> list[T]:
    """`read()` inside each region of `names`, results in the order of `names`."""
    readers = _readers.get()
    if readers is None or len(names) < 2 or _in_transaction():
        results = []
        for name in names:
            with in_region(name):
                results.append(read())
        return results
    futures: list[Future[T]] = [
        readers.thread(name).submit(contextvars.copy_context().run, _inside, name, read)
        for name in names[1:]
    ]
    try:
        with in_region(names[0]):
            first = read()
    finally:
        # Every thread finishes before anything is raised: none is left reading.
        errors = [future.exception() for future in futures]
    for error in errors:
        if error is not None:
            raise error
    return [first, *(future.result() for future in futures)]


def _inside(name: str, read: Callable[[], T]) -> T:
    _readers.set(None)  # a read on a region's thread never waits on another region's thread
    with in_region(name):
        return read()


class RegionReadsMiddleware:
    """Every portal request reads the regions side by side (`parallel_region_reads`)."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        with parallel_region_reads():
            return self.get_response(request)
