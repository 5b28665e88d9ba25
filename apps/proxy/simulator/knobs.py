"""Behaviour knobs: latency, pacing, injected errors, forced lengths, cache usage and broken
streams.

Each knob comes from a request header (`x-sim-...`) or from the model's defaults given to
`create_app(model_knobs=...)` or the `SIMULATOR_MODEL_KNOBS` environment variable (JSON);
the header wins. A model without knobs answers at once.
"""

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

# Header name -> Knobs field.
HEADERS = {
    "x-sim-latency-ms": "latency_ms",
    "x-sim-ttft-ms": "ttft_ms",
    "x-sim-tokens-per-second": "tokens_per_second",
    "x-sim-error-rate": "error_rate",
    "x-sim-error-status": "error_status",
    "x-sim-output-tokens": "output_tokens",
    "x-sim-disconnect-after-chunks": "disconnect_after_chunks",
    "x-sim-stream-error-after-chunks": "stream_error_after_chunks",
    "x-sim-cached-tokens": "cached_tokens",
    "x-sim-cache-creation-tokens": "cache_creation_tokens",
}
# The model key whose knobs apply to every model without its own entry.
ANY_MODEL = "*"


class KnobError(ValueError):
    """A knob has a value the simulator cannot use; answered with a 400."""


@dataclass(frozen=True, slots=True)
class Knobs:
    """What one request should suffer. Zero / None means "not at all"."""

    latency_ms: float = 0.0  # whole added latency of a non-streamed answer
    ttft_ms: float | None = None  # time to first token of a stream; defaults to latency_ms
    tokens_per_second: float = 0.0  # stream pacing; 0 is as fast as possible
    error_rate: float = 0.0  # 0..1 share of requests that fail; 1 fails every one
    error_status: int = 500
    output_tokens: int | None = None  # forced completion length
    disconnect_after_chunks: int | None = None  # drop the connection after this many events
    # After this many events a stream sends the API's error event (status error_status) and
    # ends cleanly, as an upstream failing mid-answer does. Streams only.
    stream_error_after_chunks: int | None = None
    # Prompt tokens reported as read from / written to the prompt cache, capped at the
    # prompt: OpenAI's cached_tokens (and the Responses API's cache_write_tokens), Anthropic's
    # cache_read_input_tokens and cache_creation_input_tokens (its input_tokens is the rest).
    cached_tokens: int = 0
    cache_creation_tokens: int = 0

    @property
    def first_token_delay(self) -> float:
        """Seconds to wait before the first streamed token."""
        ms = self.latency_ms if self.ttft_ms is None else self.ttft_ms
        return ms / 1000.0


NO_KNOBS = Knobs()
_NAMES = frozenset(f.name for f in fields(Knobs))
_INTEGER_KNOBS = frozenset(f.name for f in fields(Knobs) if f.type in (int, int | None))


def _coerce(name: str, value: Any) -> Any:
    try:
        number: float
        if name in _INTEGER_KNOBS:
            number = int(value)
        else:
            number = float(value)
    except (TypeError, ValueError):
        raise KnobError(f"simulator knob {name} must be a number, got {value!r}") from None
    if number < 0:
        raise KnobError(f"simulator knob {name} must not be negative, got {value!r}")
    if name == "error_rate" and number > 1:
        raise KnobError(f"simulator knob error_rate must be within 0..1, got {value!r}")
    if name == "error_status" and not 400 <= number <= 599:
        raise KnobError(f"simulator knob error_status must be a 4xx or 5xx, got {value!r}")
    return number


def knobs_from_mapping(values: Mapping[str, Any]) -> Knobs:
    """Knobs from a mapping of field names (`{"latency_ms": 200}`); unknown names raise."""
    unknown = set(values) - _NAMES
    if unknown:
        raise KnobError(f"unknown simulator knobs: {', '.join(sorted(unknown))}")
    return Knobs(**{name: _coerce(name, value) for name, value in values.items()})


def parse_model_knobs(config: Mapping[str, Mapping[str, Any]] | str | None) -> dict[str, Knobs]:
    """Per-model defaults from a mapping or its JSON text: `{"slow-chat": {"latency_ms": 200}}`.

    The key "*" gives the defaults of every model not listed.
    """
    if not config:
        return {}
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except json.JSONDecodeError as exc:
            raise KnobError(f"SIMULATOR_MODEL_KNOBS is not valid JSON: {exc}") from None
    if not isinstance(config, Mapping):
        raise KnobError("simulator model knobs must map model names to knob objects")
    return {str(model): knobs_from_mapping(values) for model, values in config.items()}


def apply_knob_changes(current: Mapping[str, Knobs], changes: Any) -> dict[str, Knobs]:
    """A copy of `current` with each model in `changes` set to its new knobs (null removes).

    Whole knobs objects are replaced, not merged, so a test states exactly what it wants.
    """
    if not isinstance(changes, Mapping):
        raise KnobError("knob changes must map model names to knob objects or null")
    updated = dict(current)
    for model, values in changes.items():
        if values is None:
            updated.pop(str(model), None)
        elif isinstance(values, Mapping):
            updated[str(model)] = knobs_from_mapping(values)
        else:
            raise KnobError(f"knobs of {model!r} must be an object or null")
    return updated


def model_knobs_from_env() -> dict[str, Knobs]:
    return parse_model_knobs(os.environ.get("SIMULATOR_MODEL_KNOBS"))


def resolve(headers: Mapping[str, str], model: Any, defaults: Mapping[str, Knobs]) -> Knobs:
    """The knobs of one request: the model's defaults overridden by `x-sim-*` headers."""
    base = defaults.get(model) if isinstance(model, str) else None
    if base is None:
        base = defaults.get(ANY_MODEL, NO_KNOBS)
    overrides = {}
    for header, name in HEADERS.items():
        value = headers.get(header)
        if value is not None and value != "":
            overrides[name] = _coerce(name, value)
    return replace(base, **overrides) if overrides else base


class ErrorGate:
    """Decides which requests fail, deterministically: at rate r exactly one request in 1/r
    fails (0.5 fails every second one, 1 fails all), so tests need no retries or luck.
    """

    _SCALE = 1_000_000

    def __init__(self) -> None:
        self._credit = 0

    def should_fail(self, rate: float) -> bool:
        if rate <= 0:
            return False
        if rate >= 1:
            return True
        # Integer credit avoids float drift (ten requests at 0.1 must fail exactly once).
        self._credit += round(rate * self._SCALE)
        if self._credit >= self._SCALE:
            self._credit -= self._SCALE
            return True
        return False
