"""`manage.py dashboards_rollup --days 90` / `--day 2026-10-14`: (re)compute dashboard rollups."""

import datetime as dt

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from apps.dashboards.services import dashboard_rollup_days


class Command(BaseCommand):
    help = "Recompute the dashboard rollups of past UTC days (not today). Idempotent."

    def add_arguments(self, parser):
        group = parser.add_mutually_exclusive_group(required=True)
        group.add_argument("--days", type=int, help="the last N complete days")
        group.add_argument("--day", help="one UTC day as YYYY-MM-DD")

    def handle(self, *args, days=None, day=None, **options):
        if day:
            try:
                start = dt.date.fromisoformat(day)
            except ValueError as error:
                raise CommandError(f"bad day: {error}") from error
            end = start + dt.timedelta(days=1)
        else:
            if days < 1:
                raise CommandError("--days must be >= 1")
            end = timezone.now().astimezone(dt.UTC).date()
            start = end - dt.timedelta(days=days)
        result = dashboard_rollup_days(start=start, end=end)
        self.stdout.write(
            f"{result.start}..{result.end}: {result.cube_rows} cube rows, "
            f"{result.histogram_rows} histogram rows, {result.requests} requests"
        )
