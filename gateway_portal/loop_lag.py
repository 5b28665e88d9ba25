"""How late the event loop runs: a histogram of each worker's scheduling lag.

A task asks to wake every `interval` seconds and records how much later it woke. Any code
holding the loop (a blocking call, a long pure-Python stretch, a garbage collection pause)
shows up here, and in every request's latency tail at the same time.
"""

import asyncio
import time

from prometheus_client import Histogram

LOOP_LAG = Histogram(
    "tollgate_event_loop_lag_seconds",
    "How much later than asked the event loop woke a sleeping task.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)


async def watch_loop_lag(interval: float = 0.25) -> None:
    while True:
        asked = time.perf_counter() + interval
        await asyncio.sleep(interval)
        LOOP_LAG.observe(max(time.perf_counter() - asked, 0.0))
