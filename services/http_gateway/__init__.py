"""The OpenAI-compatible HTTP front door: ``python -m services.http_gateway``."""
