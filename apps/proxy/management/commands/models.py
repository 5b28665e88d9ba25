"""`python manage.py models import FILE` / `models export [FILE]`: the catalog as YAML."""

from pathlib import Path
from typing import Any

import yaml
from django.core.management import BaseCommand, CommandError
from django.core.management.base import CommandParser

from apps.proxy.services import CatalogSpecError, model_catalog_apply, model_catalog_export


class Command(BaseCommand):
    help = "Import or export the model catalog (models and deployments) as YAML."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        imp = sub.add_parser("import", help="apply a YAML file (idempotent)")
        imp.add_argument("file")
        exp = sub.add_parser("export", help="write the current catalog as YAML")
        exp.add_argument("file", nargs="?", default="-")

    def handle(self, *args: Any, action: str, file: str, **options: Any) -> None:
        if action == "import":
            try:
                spec = yaml.safe_load(Path(file).read_text())
            except (OSError, yaml.YAMLError) as exc:
                raise CommandError(f"cannot read {file}: {exc}") from exc
            try:
                counts = model_catalog_apply(spec=spec)
            except CatalogSpecError as exc:
                raise CommandError(str(exc)) from exc
            self.stdout.write(
                f"Applied {counts['models']} models, {counts['deployments']} deployments "
                f"({counts['removed_deployments']} removed)."
            )
            return
        text = yaml.safe_dump(model_catalog_export(), sort_keys=False)
        if file == "-":
            self.stdout.write(text, ending="")
        else:
            Path(file).write_text(text)
            self.stdout.write(f"Wrote {file}")
