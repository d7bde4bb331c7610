"""What defines one run before it starts: its typed configuration, and the checks made
before any expensive work."""
