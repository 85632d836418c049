"""Housekeeping (schedules): no job left behind, no table growing forever.

- `{"task": "rescue"}` (every 5 minutes): the messages of jobs no worker has touched for
  JOB_RESCUE_AFTER_SECONDS are sent again through the outbox, or, after JOB_MAX_RESCUES,
  the jobs are given up on (frontdesk.ops.stuck_jobs);
- `{"task": "retention"}` (every hour): rows past their retention are deleted, per table
  (frontdesk.ops.retention).

A run that fails is not retried (the next one starts from the tables again); its Errors
alarm says so. Metrics: JobsRescued, JobsGivenUp (alarm JobsGivenUpAlarm), RowsDeleted.
"""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from frontdesk.entry import lambda_handler
from frontdesk.observability import logger, metrics
from frontdesk.ops import retention, stuck_jobs
from frontdesk.services import get_services

# The rescue sends messages to every queue (through the outbox and the hand-off); the
# retention encrypts leftover plaintext (a data key).
NEEDS = (
    "database",
    "notifications_queue_url",
    "llm_queue_url",
    "sync_queue_url",
    "kms_key_id",
)
# Time kept back from the Lambda deadline for the batch in flight.
_MARGIN_SECONDS = 10.0


def _deadline(context: Any) -> float:
    remaining_ms = context.get_remaining_time_in_millis() if context else 60_000
    return time.monotonic() + max(1.0, remaining_ms / 1000 - _MARGIN_SECONDS)


def housekeeping(event: dict[str, Any], context: Any) -> dict[str, Any]:
    services = get_services()
    task = event.get("task")
    if task == "rescue":
        with services.unit_of_work() as uow:
            outcome = stuck_jobs.rescue(
                uow, stuck_jobs.RescuePolicy.from_settings(services.settings)
            )
        rescued, given_up = len(outcome.rescued), len(outcome.given_up)
        metrics.add_metric(name="JobsRescued", unit=MetricUnit.Count, value=rescued)
        metrics.add_metric(name="JobsGivenUp", unit=MetricUnit.Count, value=given_up)
        log = logger.warning if given_up else logger.info
        log(
            "jobs rescued",
            extra={
                "rescued": [str(i) for i in outcome.rescued],
                "given_up": [str(i) for i in outcome.given_up],
            },
        )
        return {"task": task, "rescued": rescued, "givenUp": given_up}
    if task == "retention":
        done = retention.run(
            services.database,
            services.cipher,
            retention.RetentionPolicy.from_settings(services.settings),
            deadline=_deadline(context),
        )
        metrics.add_metric(
            name="RowsDeleted",
            unit=MetricUnit.Count,
            value=sum(n for name, n in done.items() if name != "encrypted_plaintext"),
        )
        logger.info("retention applied", extra=done)
        return {"task": task, **done}
    raise ValueError(f"unknown Housekeeping task {task!r} (rescue or retention)")


def make_handler() -> Any:
    return lambda_handler("Housekeeping", NEEDS, housekeeping)
