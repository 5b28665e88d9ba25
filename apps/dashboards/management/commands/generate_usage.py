"""Write synthetic usage history: `manage.py generate_usage --rows 1000000 --days 90`."""

import time

from django.core.management import BaseCommand, CommandError

from apps.dashboards.services import UsageGenerationError, usage_generate


class Command(BaseCommand):
    help = "Write realistic synthetic UsageRecord rows for demos and benchmarks."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--rows", type=int, default=20_000)
        parser.add_argument("--days", type=int, default=30)
        parser.add_argument("--seed", type=int, default=None, help="repeatable output")
        parser.add_argument(
            "--no-copy", action="store_true", help="INSERT in batches even on PostgreSQL"
        )

    def handle(self, *args, rows: int, days: int, seed, no_copy: bool, **options) -> None:
        if rows < 0 or days < 1:
            raise CommandError("--rows must be >= 0 and --days >= 1")
        began = time.monotonic()
        try:
            written = usage_generate(rows=rows, days=days, seed=seed, use_copy=not no_copy)
        except UsageGenerationError as exc:
            raise CommandError(str(exc)) from exc
        elapsed = time.monotonic() - began
        self.stdout.write(f"{written} usage rows over {days} days written in {elapsed:.1f}s")
