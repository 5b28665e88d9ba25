from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("proxy", "0002_usage_tags_gin"),
    ]

    operations = [
        migrations.AlterField(
            model_name="gatewaymodel",
            name="routing_strategy",
            field=models.CharField(
                choices=[
                    ("priority", "Priority (ordered failover)"),
                    ("weighted", "Weighted (traffic split by weight)"),
                    ("latency", "Lowest recent latency"),
                    ("least_busy", "Fewest requests in flight"),
                ],
                default="priority",
                max_length=20,
            ),
        ),
    ]
