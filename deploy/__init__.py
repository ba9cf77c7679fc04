"""Deployment helpers for the NLP platform."""
