"""Classification intake: ``python -m services.classification.intake``."""

from __future__ import annotations

from services.classification.settings import Settings
from shared.runtime.intake import serve

if __name__ == "__main__":
    serve("classification", Settings())
