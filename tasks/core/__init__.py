"""What every stage shares: the records stages hand each other, errors, content-addressed
storage, stopping on a signal, and the little a stage wrapper needs from Prefect."""
