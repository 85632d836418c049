"""SyncWorker (the sync queue): provider fetches, credential checks and CSV imports, a
record at a time.

A transient failure (the provider unavailable or rate limited, the breaker open, another
worker on the same import) records the error on the job and fails the record alone: SQS
redelivers it after the visibility timeout, and on the last receive the job is marked dead.
"""

from __future__ import annotations

from typing import Any

from frontdesk.config import Settings
from frontdesk.entry import lambda_handler
from frontdesk.leads import imports
from frontdesk.platform import jobs
from frontdesk.platform.queues import JobKind, JobMessage, Queue
from frontdesk.services import get_services
from frontdesk.sync.egress import Egress
from frontdesk.sync.fetch import CallPolicy, TransientSyncError, run_fetch, run_validate
from frontdesk.workers.records import Item, QueueWorker, Retry, one_by_one

NEEDS = ("database", "kms_key_id", "sync_queue_url")


def call_policy(settings: Settings) -> CallPolicy:
    return CallPolicy(
        timeout_seconds=settings.provider_timeout_seconds,
        max_attempts=settings.provider_max_attempts,
        backoff_base_seconds=settings.provider_backoff_base_seconds,
        backoff_max_seconds=settings.provider_backoff_max_seconds,
        breaker_threshold=settings.provider_breaker_failure_threshold,
        breaker_cooldown_seconds=settings.provider_breaker_cooldown_seconds,
        egress=Egress.from_settings(settings),
        concurrency=settings.provider_fetch_concurrency,
    )


def _remaining(lambda_context: Any) -> Any:
    getter = getattr(lambda_context, "get_remaining_time_in_millis", None)
    if getter is None:
        return lambda: 900.0
    return lambda: getter() / 1000.0


def run(item: Item[JobMessage], lambda_context: Any) -> str:
    services = get_services()
    settings = services.settings
    message = item.message
    try:
        if message.kind == JobKind.SYNC_FETCH:
            outcome = run_fetch(
                services,
                call_policy(settings),
                job_id=message.job_id,
                clinic_id=message.clinic_id,
            )
        elif message.kind == JobKind.SYNC_VALIDATE:
            outcome = run_validate(
                services,
                call_policy(settings),
                job_id=message.job_id,
                clinic_id=message.clinic_id,
            )
        else:
            outcome = imports.run(
                services,
                job_id=message.job_id,
                clinic_id=message.clinic_id,
                chunk_bytes=settings.import_chunk_bytes,
                remaining_seconds=_remaining(lambda_context),
            )
        if outcome == "busy":
            raise TransientSyncError("another worker holds this import")
    except TransientSyncError as exc:
        with services.unit_of_work() as uow:
            if item.context.is_last_attempt:
                jobs.finish(uow.cur, message.job_id, status="dead", error=str(exc))
            else:
                jobs.record_error(uow.cur, message.job_id, str(exc))
        raise Retry(str(exc)) from exc
    return outcome


def describe(message: JobMessage) -> dict[str, Any]:
    return {"job_id": str(message.job_id), "kind": message.kind}


worker = QueueWorker("Sync", Queue.SYNC, one_by_one(run), "sync", describe)


def make_handler() -> Any:
    return lambda_handler("SyncWorker", NEEDS, worker)
