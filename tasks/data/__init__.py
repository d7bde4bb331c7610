"""The data stages: read a source (IDX files, CSV, image folders), validate it, and split it
into the arrays training reads. `stages` holds their Prefect tasks."""
