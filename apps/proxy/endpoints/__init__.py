"""The /v1 endpoints by path: each a thin adapter over the one call pipeline."""

from .base import Endpoint
from .messages import MESSAGES_ENDPOINT
from .openai_api import CHAT_COMPLETIONS, COMPLETIONS, EMBEDDINGS, RERANKING
from .responses import RESPONSES_ENDPOINT

ENDPOINTS: dict[str, Endpoint] = {
    endpoint.path: endpoint
    for endpoint in (
        CHAT_COMPLETIONS,
        COMPLETIONS,
        EMBEDDINGS,
        RERANKING,
        MESSAGES_ENDPOINT,
        RESPONSES_ENDPOINT,
    )
}
