"""Transformer core (filled in by the model work)."""
