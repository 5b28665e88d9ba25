"""The daily rollup tables now belong to the usage ledger (usage/0005): state only, the
tables stay."""

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("dashboards", "0001_dashboard_rollups"),
        ("usage", "0005_daily_rollups_from_dashboards"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(name="LatencyHistogramDaily"),
                migrations.DeleteModel(name="TagLatencyHistogramDaily"),
                migrations.DeleteModel(name="TagUsageDaily"),
                migrations.DeleteModel(name="UsageCubeDaily"),
            ],
        ),
    ]
