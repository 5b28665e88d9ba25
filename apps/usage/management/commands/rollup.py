"""`manage.py rollup --month 2026-10` / `--day 2026-10-14` / `--days 90`: re-run rollups."""

import datetime as dt

from django.core.management.base import BaseCommand, CommandError

from apps.usage.grouping import utc_today
from apps.usage.regions import UnknownRegion, in_region, is_multi_region, region_names, region_spec
from apps.usage.rollup_tables import rollup_days
from apps.usage.rollups import usage_rollup_day, usage_rollup_month


class Command(BaseCommand):
    help = (
        "Recompute the daily usage rollups of a period (and a month's statements). "
        "Idempotent; --days N backfills the last N complete days."
    )

    def add_arguments(self, parser):
        group = parser.add_mutually_exclusive_group(required=True)
        group.add_argument("--month", help="UTC month as YYYY-MM")
        group.add_argument("--day", help="UTC day as YYYY-MM-DD")
        group.add_argument("--days", type=int, help="the last N complete UTC days")
        parser.add_argument("--region", help="one data region (default: every region)")

    def handle(self, *args, month=None, day=None, days=None, region=None, **options):
        try:
            names = [region_spec(region).name] if region else region_names()
        except UnknownRegion as error:
            raise CommandError(str(error)) from error
        for name in names:
            with in_region(name):
                self._rollup(name, month, day, days)

    def _rollup(self, region: str, month, day, days) -> None:
        try:
            if month:
                result = usage_rollup_month(month=dt.date.fromisoformat(f"{month}-01"))
            elif day:
                result = usage_rollup_day(day=dt.date.fromisoformat(day))
            else:
                if days < 1:
                    raise CommandError("--days must be >= 1")
                today = utc_today()
                result = rollup_days(start=today - dt.timedelta(days=days), end=today)
        except ValueError as error:
            raise CommandError(f"bad period: {error}") from error
        where = f"region {region}: " if is_multi_region() else ""
        self.stdout.write(
            f"{where}{result.start}..{result.end}: {result.cube_rows} cube rows, "
            f"{result.histogram_rows} histogram rows, {result.requests} requests, "
            f"{result.cost_usd} USD"
        )
