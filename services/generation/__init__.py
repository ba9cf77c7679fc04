"""Text generation worker (vLLM) and its intake."""
