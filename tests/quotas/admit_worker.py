"""One gateway-like worker process for the concurrency test.

Usage: python -m tests.quotas.admit_worker SPEC_JSON. Connects its own store, prints
"ready", waits for the go file, fires its admissions concurrently on one event loop and
prints how many were admitted.
"""

import asyncio
import json
import os
import sys
import time

from apps.quotas.counters import AsyncRedisCounterStore, CounterCheck


async def main(spec: dict) -> None:
    store = AsyncRedisCounterStore(spec["redis_url"], max_connections=16, pool_timeout=10)
    checks = [CounterCheck(**check) for check in spec["checks"]]
    await store.read([checks[0].key])  # warm the connection before the start line
    print("ready", flush=True)
    deadline = time.monotonic() + 30
    while not os.path.exists(spec["go_file"]):
        if time.monotonic() > deadline:
            sys.exit("no go signal")
        await asyncio.sleep(0.001)
    results = await asyncio.gather(*(store.admit(checks) for _ in range(spec["attempts"])))
    print(json.dumps({"admitted": sum(r.allowed for r in results)}), flush=True)
    await store.aclose()


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
