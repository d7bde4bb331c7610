"""Prefect flows: they wire the stages in `tasks/` and hold no logic of their own."""
