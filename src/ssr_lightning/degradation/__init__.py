"""Degradation engine (placeholder, filled below)."""
