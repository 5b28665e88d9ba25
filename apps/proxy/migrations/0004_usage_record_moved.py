"""UsageRecord now belongs to the usage app (apps/usage); its table is unchanged."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("proxy", "0003_routing_strategies"),
        ("usage", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="UsageRecord")],
            database_operations=[],
        ),
    ]
