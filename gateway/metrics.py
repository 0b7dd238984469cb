"""Prometheus metrics (docs/operations.md): one module-level ``METRICS`` every layer
records into; it does nothing until ``configure`` turns it on (``metrics.listen`` set), so
an unconfigured gateway pays one attribute lookup and call per event."""

from __future__ import annotations

from typing import Any


class Metrics:
    """The events the gateway counts. Off: every method returns at once."""

    enabled = False

    def configure(self, settings: Any) -> None:
        """Turn the metrics on in this process (a server process, or a worker)."""

    def reload(self, ok: bool) -> None:
        """A configuration reload finished, well or badly."""


METRICS = Metrics()


def serve(settings: Any, workers: int) -> None:
    """Before the server starts (in the parent when there are several workers): when
    ``metrics.listen`` is set, prepare the shared state and start the listener."""
