"""Pipeline stages: plain functions over numpy and pandas, each with a thin Prefect task."""
