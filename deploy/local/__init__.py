"""Local (no Docker) runners for platform services, for tests and dev stacks."""
