"""The daily rollup tables move from the dashboards app to the usage ledger, and become the
one set every reader uses (billing's own daily and monthly rollups are dropped in
billing/0005).

The tables keep their names: the move is state only. Their rows are derived data: they are
deleted here, because the per-tag table gains a model column and both usage tables gain
cached tokens, which old rows do not hold. Until the days are rolled up again every reader
takes the raw rows (the coverage rule), so figures stay right; the scheduled run re-rolls
this month and the recent days, and `manage.py rollup --days N` backfills older history.
"""

from django.db import migrations, models

ROLLUP_TABLES = (
    "UsageCubeDaily",
    "TagUsageDaily",
    "LatencyHistogramDaily",
    "TagLatencyHistogramDaily",
)


def delete_rollup_rows(apps, schema_editor):
    # The database being migrated, not where the region router would send the model.
    alias = schema_editor.connection.alias
    for name in ROLLUP_TABLES:
        apps.get_model("usage", name).objects.using(alias).all().delete()


class Migration(migrations.Migration):

    dependencies = [
        ("usage", "0004_usage_partitioned_by_month"),
        ("dashboards", "0001_dashboard_rollups"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='LatencyHistogramDaily',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('day', models.DateField()),
                        ('all_teams', models.BooleanField(default=False)),
                        ('team_id', models.BigIntegerField(null=True)),
                        ('model', models.CharField(max_length=200)),
                        ('provider', models.CharField(blank=True, max_length=20)),
                        ('requests', models.BigIntegerField(default=0)),
                        ('streams', models.BigIntegerField(default=0)),
                        ('latency', models.JSONField(default=dict)),
                        ('ttft', models.JSONField(default=dict)),
                        ('computed_at', models.DateTimeField()),
                    ],
                    options={
                        'db_table': 'dashboards_latencyhistogramdaily',
                        'ordering': ['day', 'team_id', 'model'],
                        'indexes': [models.Index(fields=['all_teams', 'day', 'team_id'], name='latencyhist_day_team')],
                    },
                ),
                migrations.CreateModel(
                    name='TagLatencyHistogramDaily',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('day', models.DateField()),
                        ('all_teams', models.BooleanField(default=False)),
                        ('team_id', models.BigIntegerField(null=True)),
                        ('tag_key', models.CharField(max_length=64)),
                        ('tag_value', models.CharField(blank=True, max_length=256)),
                        ('requests', models.BigIntegerField(default=0)),
                        ('streams', models.BigIntegerField(default=0)),
                        ('latency', models.JSONField(default=dict)),
                        ('ttft', models.JSONField(default=dict)),
                        ('computed_at', models.DateTimeField()),
                    ],
                    options={
                        'db_table': 'dashboards_taglatencyhistogramdaily',
                        'ordering': ['day', 'tag_key', 'tag_value'],
                        'indexes': [models.Index(fields=['tag_key', 'tag_value', 'day'], name='taglatency_value_day')],
                    },
                ),
                migrations.CreateModel(
                    name='TagUsageDaily',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('day', models.DateField()),
                        ('team_id', models.BigIntegerField(null=True)),
                        ('user_id', models.BigIntegerField(null=True)),
                        ('virtual_account_id', models.BigIntegerField(null=True)),
                        ('tag_key', models.CharField(max_length=64)),
                        ('tag_value', models.CharField(blank=True, max_length=256)),
                        ('requests', models.BigIntegerField(default=0)),
                        ('errors', models.BigIntegerField(default=0)),
                        ('input_tokens', models.BigIntegerField(default=0)),
                        ('output_tokens', models.BigIntegerField(default=0)),
                        ('cost_usd', models.DecimalField(decimal_places=10, default=0, max_digits=24)),
                        ('computed_at', models.DateTimeField()),
                    ],
                    options={
                        'db_table': 'dashboards_tagusagedaily',
                        'ordering': ['day', 'tag_key', 'tag_value'],
                        'indexes': [models.Index(fields=['tag_key', 'day'], name='tagusage_key_day'), models.Index(fields=['tag_key', 'tag_value', 'day'], name='tagusage_value_day')],
                    },
                ),
                migrations.CreateModel(
                    name='UsageCubeDaily',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('day', models.DateField()),
                        ('team_id', models.BigIntegerField(null=True)),
                        ('user_id', models.BigIntegerField(null=True)),
                        ('virtual_account_id', models.BigIntegerField(null=True)),
                        ('model', models.CharField(max_length=200)),
                        ('provider', models.CharField(blank=True, max_length=20)),
                        ('error_type', models.CharField(blank=True, max_length=64)),
                        ('is_stream', models.BooleanField(default=False)),
                        ('requests', models.BigIntegerField(default=0)),
                        ('errors', models.BigIntegerField(default=0)),
                        ('input_tokens', models.BigIntegerField(default=0)),
                        ('output_tokens', models.BigIntegerField(default=0)),
                        ('cost_usd', models.DecimalField(decimal_places=10, default=0, max_digits=24)),
                        ('computed_at', models.DateTimeField()),
                    ],
                    options={
                        'db_table': 'dashboards_usagecubedaily',
                        'ordering': ['day', 'team_id', 'model'],
                        'indexes': [models.Index(fields=['day', 'team_id'], name='cube_day_team')],
                    },
                ),
            ],
        ),
        migrations.RunPython(delete_rollup_rows, migrations.RunPython.noop),
        migrations.AddField(
            model_name="usagecubedaily",
            name="cached_tokens",
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="tagusagedaily",
            name="cached_tokens",
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="tagusagedaily",
            name="model",
            field=models.CharField(blank=True, max_length=200, default=""),
            preserve_default=False,
        ),
        migrations.AddIndex(
            model_name="usagecubedaily",
            index=models.Index(fields=["day", "computed_at"], name="cube_day_computed"),
        ),
    ]
