"""The router seam: given a model and a request, the ordered deployments to try.

Only `priority` (ordered failover) exists today; latency-based, weighted and least-busy
strategies plug in here by `routing_strategy`.
"""

from .catalog import ModelEntry
from .providers.base import DeploymentInfo


def deployments_to_try(model: ModelEntry, body: dict) -> list[DeploymentInfo]:
    return list(model.deployments)
