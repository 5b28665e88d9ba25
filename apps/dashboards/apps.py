from django.apps import AppConfig

# `make run` seeds this much synthetic history when the database has less usage than that.
DEMO_ROWS = 20_000
DEMO_DAYS = 30


class DashboardsConfig(AppConfig):
    name = "apps.dashboards"
    label = "dashboards"

    def seed_demo(self, stdout) -> None:
        """Called by `manage.py seed_demo`: a month of synthetic usage so charts are not empty."""
        from apps.dashboards.services import usage_generate
        from apps.proxy.models import UsageRecord

        existing = UsageRecord.objects.count()
        if existing >= DEMO_ROWS // 10:
            stdout.write(f"Dashboards: {existing} usage rows already there, no history added")
            return
        written = usage_generate(rows=DEMO_ROWS, days=DEMO_DAYS)
        stdout.write(f"Dashboards: {written} synthetic usage rows over {DEMO_DAYS} days")
