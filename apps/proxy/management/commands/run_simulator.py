"""Serve the upstream simulator standalone: `manage.py run_simulator --port 9000`."""

import importlib.util
import os
from typing import Any

import uvicorn
from django.core.management import BaseCommand, CommandError
from django.core.management.base import CommandParser

from apps.proxy.simulator.knobs import KnobError, parse_model_knobs


class Command(BaseCommand):
    help = "Serve the OpenAI/Anthropic-compatible upstream simulator with uvicorn."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=9000)
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--prefix", default="", help='serve below a path, e.g. "/simulator"')
        parser.add_argument(
            "--required-key",
            default=None,
            help="answer 401 to any other API key (default: $SIMULATOR_REQUIRED_KEY)",
        )
        parser.add_argument(
            "--model-knobs",
            default=None,
            help='per-model knobs as JSON, e.g. \'{"slow-chat": {"latency_ms": 200}}\' '
            "(default: $SIMULATOR_MODEL_KNOBS)",
        )
        parser.add_argument("--workers", type=int, default=1)
        parser.add_argument("--log-level", default="info")

    def handle(self, *args: Any, **opts: Any) -> None:
        if opts["workers"] < 1:
            raise CommandError("--workers must be at least 1")
        if opts["model_knobs"] is not None:
            os.environ["SIMULATOR_MODEL_KNOBS"] = opts["model_knobs"]
        try:
            # Fail here with a readable message rather than in every worker.
            parse_model_knobs(os.environ.get("SIMULATOR_MODEL_KNOBS"))
        except KnobError as exc:
            raise CommandError(str(exc)) from exc
        if opts["required_key"] is not None:
            os.environ["SIMULATOR_REQUIRED_KEY"] = opts["required_key"]
        os.environ["SIMULATOR_PREFIX"] = opts["prefix"]

        # The app is built by a factory from the environment set above, so every worker
        # process (which imports it afresh) gets the same configuration.
        uvicorn.run(
            "apps.proxy.simulator.app:create_app_from_env",
            factory=True,
            host=opts["host"],
            port=opts["port"],
            workers=opts["workers"],
            loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
            http="httptools" if importlib.util.find_spec("httptools") else "h11",
            access_log=False,
            log_level=opts["log_level"],
            lifespan="on",
        )
