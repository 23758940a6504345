"""A deterministic, seeded cluster simulator for the Raft core, and the tests built on it."""
