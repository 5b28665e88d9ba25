from django.apps import AppConfig

DEMO_DAYS = 30


class DashboardsConfig(AppConfig):
    name = "apps.dashboards"
    label = "dashboards"

    def seed_demo(self, stdout) -> None:
        """Called by `manage.py seed_demo`: a month of synthetic usage so charts are not empty,
        rolled up here, so the charts show before the worker `make run` starts rolls it up."""
        import datetime as dt

        from django.conf import settings
        from django.utils import timezone

        from apps.dashboards.services import usage_generate
        from apps.usage.models import UsageRecord
        from apps.usage.rollup_tables import rollup_days

        demo_rows = settings.DEMO_USAGE_ROWS
        existing = UsageRecord.objects.count()
        if existing >= demo_rows // 10:
            stdout.write(f"Dashboards: {existing} usage rows already there, no history added")
        else:
            written = usage_generate(rows=demo_rows, days=DEMO_DAYS)
            stdout.write(f"Dashboards: {written} synthetic usage rows over {DEMO_DAYS} days")
        today = timezone.now().astimezone(dt.UTC).date()
        result = rollup_days(start=today - dt.timedelta(days=DEMO_DAYS + 1), end=today)
        stdout.write(f"Dashboards: {result.cube_rows} rollup rows for the past days")
