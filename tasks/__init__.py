"""The pipeline's code, grouped as its stages run: `data`, `budget`, `training`,
`evaluation`, `history`, `predict`; `run` holds a run's configuration and its checks,
`core` what they all share. Each group's plain functions import no Prefect; its `stages`
module holds the thin Prefect tasks that wrap them."""
