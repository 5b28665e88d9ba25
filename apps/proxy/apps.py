from pathlib import Path
from typing import TextIO

from django.apps import AppConfig

DEMO_MODELS = Path(__file__).resolve().parent / "fixtures" / "demo_models.yaml"


class ProxyConfig(AppConfig):
    name = "apps.proxy"
    label = "proxy"
    verbose_name = "Gateway proxy"

    def seed_demo(self, stdout: TextIO) -> None:
        """Declare the demo models (served by the built-in simulator) from their YAML."""
        import yaml

        from .services import model_catalog_apply

        counts = model_catalog_apply(spec=yaml.safe_load(DEMO_MODELS.read_text()))
        stdout.write(f"Demo models ready: {counts['models']} models via the simulator.")
