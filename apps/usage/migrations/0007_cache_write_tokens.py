"""A fourth token class: prompt-cache writes (`cache_write_tokens`), on the usage row and on
every rollup table beside `cached_tokens` (cache reads). Existing rows count 0 writes: no
writes were recorded apart before (they were plain input, and still are part of
`input_tokens`), so old rollups agree with old raw rows.

The raw row's column has a database default too, so a writer that predates it still inserts.

SQLite (embedded mode) cannot add a NOT NULL column with a default in place: Django rebuilds
the table, and a rebuild keeps only the indexes of the model state. The unique index on
`request_id` alone that migration 0004 made outside that state (the writer's ON CONFLICT
names it) is made again after the rebuild, and before the reverse rebuild is undone.
Self-contained on purpose, like 0004.
"""

from django.db import migrations, models

SQLITE_UNIQUE_REQUEST_ID = "usage_request_id_once"


def sqlite_unique_request_id(apps, schema_editor):
    if schema_editor.connection.vendor != "sqlite":
        return
    table = apps.get_model("usage", "UsageRecord")._meta.db_table
    schema_editor.execute(
        f"CREATE UNIQUE INDEX IF NOT EXISTS {SQLITE_UNIQUE_REQUEST_ID} ON {table} (request_id)"
    )


class Migration(migrations.Migration):

    dependencies = [
        ('usage', '0006_hourly_rollups'),
    ]

    operations = [
        # Backwards, this runs last: after RemoveField's rebuild.
        migrations.RunPython(migrations.RunPython.noop, sqlite_unique_request_id),
        migrations.AddField(
            model_name='usagerecord',
            name='cache_write_tokens',
            field=models.PositiveIntegerField(db_default=0, default=0),
        ),
        migrations.RunPython(sqlite_unique_request_id, migrations.RunPython.noop),
        migrations.AddField(
            model_name='tagusagedaily',
            name='cache_write_tokens',
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='tagusagehourly',
            name='cache_write_tokens',
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='usagecubedaily',
            name='cache_write_tokens',
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='usagecubehourly',
            name='cache_write_tokens',
            field=models.BigIntegerField(default=0),
        ),
    ]
