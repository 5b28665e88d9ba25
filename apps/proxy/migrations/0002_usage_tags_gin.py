"""GIN index on UsageRecord.tags (jsonb on PostgreSQL) for tag filters like tags @> '{...}'.

PostgreSQL only: SQLite (embedded mode) has no GIN and stores JSON as text.
"""

from django.db import migrations

INDEX = "proxy_usagerecord_tags_gin"


def create_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    table = apps.get_model("proxy", "UsageRecord")._meta.db_table
    schema_editor.execute(
        f"CREATE INDEX IF NOT EXISTS {INDEX} ON {schema_editor.quote_name(table)} "
        "USING gin (tags jsonb_path_ops)"
    )


def drop_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(f"DROP INDEX IF EXISTS {INDEX}")


class Migration(migrations.Migration):
    dependencies = [("proxy", "0001_initial")]

    operations = [migrations.RunPython(create_index, drop_index)]
