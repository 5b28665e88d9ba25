"""UsageRecord moves from the proxy app to the usage app: state only, the table stays."""

from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("proxy", "0003_routing_strategies"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="UsageRecord",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("request_id", models.CharField(max_length=64, unique=True)),
                        ("created_at", models.DateTimeField(db_index=True)),
                        ("inserted_at", models.DateTimeField(auto_now_add=True, db_index=True)),
                        ("api_key_id", models.BigIntegerField(db_index=True, null=True)),
                        ("key_lineage_id", models.UUIDField(db_index=True, null=True)),
                        ("user_id", models.BigIntegerField(db_index=True, null=True)),
                        ("team_id", models.BigIntegerField(db_index=True, null=True)),
                        ("virtual_account_id", models.BigIntegerField(db_index=True, null=True)),
                        ("end_user", models.CharField(blank=True, max_length=256)),
                        ("model", models.CharField(db_index=True, max_length=200)),
                        ("deployment", models.CharField(blank=True, max_length=200)),
                        ("provider", models.CharField(blank=True, max_length=20)),
                        ("request_type", models.CharField(max_length=20)),
                        ("is_stream", models.BooleanField(default=False)),
                        ("status_code", models.PositiveSmallIntegerField()),
                        ("error_type", models.CharField(blank=True, max_length=64)),
                        ("input_tokens", models.PositiveIntegerField(default=0)),
                        ("output_tokens", models.PositiveIntegerField(default=0)),
                        ("cached_tokens", models.PositiveIntegerField(default=0)),
                        ("tokens_estimated", models.BooleanField(default=False)),
                        ("cost_usd", models.DecimalField(decimal_places=10, default=0, max_digits=18)),
                        ("latency_ms", models.FloatField(default=0)),
                        ("ttft_ms", models.FloatField(null=True)),
                        ("upstream_latency_ms", models.FloatField(null=True)),
                        ("overhead_ms", models.FloatField(null=True)),
                        ("attempts", models.PositiveSmallIntegerField(default=1)),
                        ("client_disconnected", models.BooleanField(default=False)),
                        ("tags", models.JSONField(default=dict)),
                        ("request_body", models.JSONField(blank=True, null=True)),
                        ("response_body", models.JSONField(blank=True, null=True)),
                    ],
                    options={
                        "db_table": "proxy_usagerecord",
                        "ordering": ["-created_at"],
                        "indexes": [models.Index(fields=["team_id", "created_at"], name="usage_team_time")],
                    },
                ),
            ],
            database_operations=[],
        ),
    ]
