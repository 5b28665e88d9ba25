import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("billing", "0006_modelprice_cache_write_cost")]

    operations = [
        migrations.AddField(
            model_name="modelprice",
            name="updated_at",
            field=models.DateTimeField(auto_now=True, default=django.utils.timezone.now),
            preserve_default=False,
        ),
    ]
