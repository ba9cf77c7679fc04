"""NER intake: ``python -m services.ner.intake``."""

from __future__ import annotations

from services.ner.settings import Settings
from shared.runtime.intake import serve

if __name__ == "__main__":
    serve("ner", Settings())
