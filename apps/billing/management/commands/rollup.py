"""`manage.py rollup --month 2026-10` / `--day 2026-10-14`: re-run rollups for a period."""

import datetime as dt

from django.core.management.base import BaseCommand, CommandError

from apps.billing.services import usage_rollup_day, usage_rollup_month


class Command(BaseCommand):
    help = "Recompute usage rollups (and statements, for a month). Idempotent."

    def add_arguments(self, parser):
        group = parser.add_mutually_exclusive_group(required=True)
        group.add_argument("--month", help="UTC month as YYYY-MM")
        group.add_argument("--day", help="UTC day as YYYY-MM-DD")

    def handle(self, *args, month=None, day=None, **options):
        try:
            if month:
                result = usage_rollup_month(month=dt.date.fromisoformat(f"{month}-01"))
            else:
                result = usage_rollup_day(day=dt.date.fromisoformat(day))
        except ValueError as error:
            raise CommandError(f"bad period: {error}") from error
        self.stdout.write(
            f"{result.start}..{result.end}: {result.daily_rows} daily rows, "
            f"{result.monthly_rows} monthly rows, {result.requests} requests, "
            f"{result.cost_usd} USD"
        )
