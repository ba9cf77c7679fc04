"""Generation intake: ``python -m services.generation.intake``."""

from __future__ import annotations

from services.generation.settings import Settings
from shared.runtime.intake import serve

if __name__ == "__main__":
    serve("generation", Settings())
