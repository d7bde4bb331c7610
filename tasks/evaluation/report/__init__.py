"""Comparison: rank the models and write the run's report directory.

`analysis` computes one `Findings` record; report.md, report.html, metrics.json, the
figures, the console table and the Prefect artifacts are views of it.
"""
