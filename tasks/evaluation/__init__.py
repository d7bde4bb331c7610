"""Evaluation: score each trained model, the soft-voting ensemble, the significance of
the differences, and the report. `stages` holds their Prefect tasks."""
