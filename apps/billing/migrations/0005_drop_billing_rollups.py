"""Billing's own daily and monthly rollups are gone: statements, insights and quota seeding
read the one set of daily tables (usage/0005). Derived data only: nothing is lost."""

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('billing', '0004_rollup_day_computed_index'),
        ('usage', '0005_daily_rollups_from_dashboards'),
    ]

    operations = [
        migrations.DeleteModel(
            name='UsageRollupDaily',
        ),
        migrations.DeleteModel(
            name='UsageRollupMonthly',
        ),
    ]
