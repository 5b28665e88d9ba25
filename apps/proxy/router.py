"""The router seam: given a model and a request, the ordered deployments to try.

Strategies, chosen per model (`GatewayModel.routing_strategy`):

* `priority`: catalog order (priority, then id): ordered failover.
* `weighted`: the first deployment drawn by weight (90/10 canaries); the rest follow in
  priority order as failovers.
* `latency`: lowest EWMA of total latency (of time to first token for streams) first, with
  ROUTING_EXPLORATION_SHARE of requests sent to a random deployment first so a recovered or
  never-measured one is noticed again.
* `least_busy`: fewest requests in flight (this worker's own count plus the other workers'
  as of the last health sync); ties rotate.

Every strategy puts deployments whose breaker is open after the available ones: they are only
tried as a last resort, when every available deployment has failed (a model whose only
deployment is cooled still gets an answer attempt rather than an instant error). `calls._open`
then walks the list with failover, bounded by PROXY_MAX_ATTEMPTS.

This runs on every request: memory reads only (see `health`), no I/O, a sort of a handful.
"""

import itertools
import random
import time
from typing import Any

from django.conf import settings

from .catalog import ModelEntry
from .health import HealthBoard, board
from .providers.base import DeploymentInfo

PRIORITY, WEIGHTED, LATENCY, LEAST_BUSY = "priority", "weighted", "latency", "least_busy"

# Routing spreads load, it does not need unpredictability: a plain PRNG is the right tool.
rng = random.Random()  # noqa: S311
_rotation = itertools.count()


def _weighted_first(
    deployments: list[DeploymentInfo], generator: random.Random
) -> list[DeploymentInfo]:
    total = sum(max(d.weight, 0) for d in deployments)
    if total <= 0 or len(deployments) < 2:
        return deployments
    point = generator.random() * total
    for index, deployment in enumerate(deployments):
        point -= max(deployment.weight, 0)
        if point < 0:
            return [deployment, *deployments[:index], *deployments[index + 1 :]]
    return deployments


def order(
    model: ModelEntry,
    *,
    stream: bool,
    health: HealthBoard,
    generator: random.Random,
    now: float,
) -> list[DeploymentInfo]:
    """The deployments of `model` in the order to try them (see the module docstring)."""
    available: list[DeploymentInfo] = []
    cooled: list[DeploymentInfo] = []
    states = health.deployments
    for deployment in model.deployments:
        state = states.get(deployment.id)
        if state is None or state.available(now):
            available.append(deployment)
        else:
            cooled.append(deployment)
    if len(available) > 1:
        strategy = model.routing_strategy
        if strategy == WEIGHTED:
            available = _weighted_first(available, generator)
        elif strategy == LATENCY:
            if generator.random() < settings.ROUTING_EXPLORATION_SHARE:
                pick = generator.randrange(len(available))
                available.insert(0, available.pop(pick))
            else:
                available.sort(
                    key=lambda d: states[d.id].latency_ms(stream) if d.id in states else 0.0
                )
        elif strategy == LEAST_BUSY:
            size = len(available)
            turn = next(_rotation)
            ranked = sorted(
                enumerate(available),
                key=lambda item: (
                    states[item[1].id].busy() if item[1].id in states else 0,
                    (item[0] - turn) % size,
                ),
            )
            available = [deployment for _, deployment in ranked]
    if cooled:
        # Soonest to cool down first among the last resorts.
        cooled.sort(key=lambda d: states[d.id].open_until)
        available.extend(cooled)
    return available


def deployments_to_try(model: ModelEntry, body: dict[str, Any]) -> list[DeploymentInfo]:
    if len(model.deployments) < 2:
        return list(model.deployments)
    return order(
        model, stream=bool(body.get("stream")), health=board, generator=rng, now=time.time()
    )
