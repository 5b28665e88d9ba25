"""Usage rows carry their data region. On SQLite, AddField rebuilds the table, which drops
the unique index on `request_id` kept outside the model state (0004, 0007): recreated here."""

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
        ('usage', '0007_cache_write_tokens'),
    ]

    operations = [
        # Backwards, this runs last: after RemoveField's rebuild.
        migrations.RunPython(migrations.RunPython.noop, sqlite_unique_request_id),
        migrations.AddField(
            model_name='usagerecord',
            name='region',
            field=models.CharField(blank=True, db_default='', default='', max_length=32),
        ),
        migrations.RunPython(sqlite_unique_request_id, migrations.RunPython.noop),
    ]
