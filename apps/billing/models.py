from django.db import models


class ModelPrice(models.Model):
    """A list price per token for a model name, effective from a date.

    Prices change by adding a row with a later `effective_from`, so rows already costed keep
    the price that applied when they were made.
    """

    model_name = models.CharField(max_length=200)
    provider = models.CharField(max_length=50, blank=True)
    mode = models.CharField(max_length=20, blank=True)
    input_cost_per_token = models.DecimalField(max_digits=20, decimal_places=12)
    output_cost_per_token = models.DecimalField(max_digits=20, decimal_places=12, default=0)
    cached_input_cost_per_token = models.DecimalField(
        max_digits=20, decimal_places=12, null=True, blank=True
    )
    effective_from = models.DateField()

    class Meta:
        ordering = ["model_name", "-effective_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["model_name", "effective_from"], name="modelprice_unique_from"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model_name} from {self.effective_from}"
