"""The run history: each run recorded in SQLite, compared with the previous one of its
profile, and regressions alerted on. `stages` holds their Prefect tasks."""
