"""Classification worker: zero-shot text classification on an embedded MiniLM model."""
