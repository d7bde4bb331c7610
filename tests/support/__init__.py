"""Helpers the test modules share: fakes, sample data, servers and waiting on conditions.
Test modules import from here, never from each other."""
