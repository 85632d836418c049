"""A function's entry point: its settings checked at cold start, then around every
invocation the hand-off's scope (what the invocation commits is relayed once it has its
answer), Powertools' logging (correlation id, the Lambda context) and metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from frontdesk.observability import logger, metrics
from frontdesk.services import Services, get_services

Handler = Callable[[dict[str, Any], Any], Any]


def lambda_handler(
    function: str,
    needs: Iterable[str],
    handle: Handler,
    *,
    correlation_id_path: str | None = None,
    emits_metrics: bool = True,
    relay_after_response: bool = False,
    snap_start: bool = False,
) -> Handler:
    """`handle` as `function`'s Lambda handler; a ConfigurationError now when a setting it
    needs is missing, instead of at the first event. `emits_metrics`: flush the invocation's
    EMF metrics (functions that add none leave it off). `relay_after_response`: in Lambda,
    register the internal extension that relays after the response has gone out.
    `snap_start`: when this init is snapshotted, do the first request's work now and register
    the runtime hooks (frontdesk.platform.snapstart)."""
    services = get_services()
    services.settings.require(function, needs)
    if relay_after_response and services.settings.aws_lambda_runtime_api:
        start_relay_extension(services)
    if snap_start and services.settings.aws_lambda_initialization_type == "snap-start":
        from frontdesk.platform.snapstart import prepare_snapshot

        prepare_snapshot(services)

    def invoke(event: dict[str, Any], context: Any) -> Any:
        with get_services().handoff.invocation():
            return handle(event, context)

    handler: Handler = logger.inject_lambda_context(invoke, correlation_id_path=correlation_id_path)
    if emits_metrics:
        handler = metrics.log_metrics(handler)
    return handler


def start_relay_extension(services: Services) -> None:
    """Register the after-response extension (during init) and let the container's hand-off
    give it each invocation's outbox ids."""
    from frontdesk.platform.extension import AfterResponseExtension

    def relay(outbox_ids: list[int]) -> None:
        if outbox_ids:
            get_services().handoff.relay(outbox_ids)

    extension = AfterResponseExtension(services.settings.aws_lambda_runtime_api, relay)
    extension.start()
    services.handoff.relay_after_response_with(extension.after_response)
