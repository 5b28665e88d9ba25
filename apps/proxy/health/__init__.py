"""Live health of deployments: latency EWMAs, requests in flight and circuit breakers.

The router reads the board on every request, so the request path only touches process
memory: no Redis round trip. Sharing across worker processes happens off the request path.

- `breaker`: one deployment's breaker and EWMAs (plain state, no I/O);
- `worker_board`: this worker's board (`board`), told each attempt's outcome by the call
  pipeline;
- `shared_state`: the sync of the board with other workers through Redis;
- `report`: the fleet's merged figures for the portal page, its JSON and /metrics.

The names below are the ones other modules import from `apps.proxy.health`.
"""

from .breaker import CLOSED, HALF_OPEN, OPEN, STATE_VALUES
from .report import merge_stats, overview
from .worker_board import HealthBoard, board, ttft_timeout

__all__ = (
    "CLOSED",
    "HALF_OPEN",
    "OPEN",
    "STATE_VALUES",
    "HealthBoard",
    "board",
    "merge_stats",
    "overview",
    "ttft_timeout",
)
