"""A function's entry point: its settings checked at cold start, then Powertools' logging
(correlation id, the Lambda context) and metrics around every invocation."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from frontdesk.observability import logger, metrics
from frontdesk.services import get_services

Handler = Callable[[dict[str, Any], Any], Any]


def lambda_handler(
    function: str,
    needs: Iterable[str],
    handle: Handler,
    *,
    correlation_id_path: str | None = None,
    emits_metrics: bool = True,
) -> Handler:
    """`handle` as `function`'s Lambda handler; a ConfigurationError now when a setting it
    needs is missing, instead of at the first event. `emits_metrics`: flush the invocation's
    EMF metrics (functions that add none leave it off)."""
    get_services().settings.require(function, needs)
    handler: Handler = logger.inject_lambda_context(handle, correlation_id_path=correlation_id_path)
    if emits_metrics:
        handler = metrics.log_metrics(handler)
    return handler
