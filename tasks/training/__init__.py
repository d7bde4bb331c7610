"""Training: fit one model (`train`), tune its parameters (`tune`), share the cores
between the models that train at once (`cores`), and the models, one module each
(`models`). `stages` holds their Prefect tasks."""
