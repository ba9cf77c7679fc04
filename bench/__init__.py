"""Benchmarks of the platform, run against the local stack (``python -m bench.<name>``)."""
