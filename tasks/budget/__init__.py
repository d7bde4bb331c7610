"""The time budget: measure what each model costs here (`measure`), plan variants, epochs,
rounds and drops to the deadline (`planner`), and keep the plan for reruns (`plans`).
`stages` holds its Prefect task."""
