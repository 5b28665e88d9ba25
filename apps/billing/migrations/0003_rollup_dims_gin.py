"""GIN index on the daily rollup's dims (jsonb on PostgreSQL), for the dashboards' tag filters
(`dims @> '{"customer_id": "acme"}'`) over long ranges.

PostgreSQL only: SQLite (embedded mode) has no GIN and stores JSON as text.
"""

from django.db import migrations

INDEX = "billing_rollupday_dims_gin"


def create_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    table = apps.get_model("billing", "UsageRollupDaily")._meta.db_table
    schema_editor.execute(
        f"CREATE INDEX IF NOT EXISTS {INDEX} ON {schema_editor.quote_name(table)} "
        "USING gin (dims jsonb_path_ops)"
    )


def drop_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(f"DROP INDEX IF EXISTS {INDEX}")


class Migration(migrations.Migration):
    dependencies = [("billing", "0002_tiers_rollups_statements")]

    operations = [migrations.RunPython(create_index, drop_index)]
