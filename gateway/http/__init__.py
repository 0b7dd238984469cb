"""The HTTP edge: the server protocol, the ASGI entry, and wire helpers for the hot path."""
