"""Summarization worker: extractive summaries on MiniLM sentence embeddings, abstractive on a local LLM."""
