"""`quotas import FILE`, `quotas export [--version N]`, `quotas history`, `quotas rollback N`."""

import sys
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management import BaseCommand, CommandError
from django.core.management.base import CommandParser

from apps.quotas.exceptions import QuotaConfigError, QuotasError
from apps.quotas.selectors import active_quota_config_version, quota_config_versions
from apps.quotas.services import quota_config_apply, quota_config_rollback


class Command(BaseCommand):
    help = "Import, export, list and roll back the gateway's quota rule configs."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        imp = sub.add_parser("import", help="validate a YAML file and make it the active config")
        imp.add_argument("file", help="path to the YAML file, or - for stdin")
        imp.add_argument("--author", help="username recorded as the author")
        exp = sub.add_parser("export", help="print the active (or a given) version's YAML")
        exp.add_argument("--version", type=int, dest="config_version", default=None)
        sub.add_parser("history", help="list stored versions")
        back = sub.add_parser("rollback", help="make an old version active again")
        back.add_argument("config_version", type=int)
        back.add_argument("--author", help="username recorded as the author")

    def handle(self, *args: Any, **opts: Any) -> None:
        action = opts["action"]
        if action == "import":
            self._import(opts)
        elif action == "export":
            self._export(opts["config_version"])
        elif action == "history":
            for row in quota_config_versions():
                author = row.author.get_username() if row.author else "-"
                active = "*" if row.is_active else " "
                self.stdout.write(
                    f"{active} v{row.version}  {row.created_at:%Y-%m-%d %H:%M}Z  {author}  "
                    f"{row.name}  {row.note}"
                )
        else:
            try:
                row = quota_config_rollback(
                    version=opts["config_version"], author=self._author(opts["author"])
                )
            except (QuotaConfigError, QuotasError) as exc:
                raise CommandError(str(exc)) from exc
            self.stdout.write(f"rolled back: v{row.version} is active")

    def _author(self, username: str | None) -> Any:
        if not username:
            return None
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user {username!r}")
        return user

    def _import(self, opts: dict[str, Any]) -> None:
        path = opts["file"]
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc}") from exc
        author = self._author(opts["author"])
        try:
            row = quota_config_apply(yaml_text=text, author=author, note=f"import {path}")
        except QuotaConfigError as exc:
            lines = "\n".join(f"  {issue}" for issue in exc.issues)
            raise CommandError(f"{path} is not a valid quota config:\n{lines}") from exc
        self.stdout.write(f"imported {path}: v{row.version} is active")

    def _export(self, version: int | None) -> None:
        if version is None:
            row = active_quota_config_version()
            if row is None:
                raise CommandError("no quota config has been applied yet")
        else:
            row = quota_config_versions().filter(version=version).first()
            if row is None:
                raise CommandError(f"no quota config version {version}")
        text = row.yaml_text
        self.stdout.write(text if text.endswith("\n") else text + "\n", ending="")
