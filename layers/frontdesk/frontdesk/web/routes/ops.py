"""Operator routes (platform operators only): queue health, dead letters, job metrics and
stuck jobs.

Queues and dead letters hold every clinic's work, so these need the platform's `operator`
role; a clinic's admin is not enough."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from frontdesk.ops import dead_letters, job_metrics, stuck_jobs
from frontdesk.ops.dead_letters import DeadLetter, DeadLetterQueue, ReplayOutcome, ReplayRequest
from frontdesk.ops.queue_health import Queues, queue_health
from frontdesk.web.auth import GuardedRoute, Operator
from frontdesk.web.context import Web, WebContext, Write
from frontdesk.web.http import ERROR_RESPONSES, Envelope

router = APIRouter(route_class=GuardedRoute, tags=["operations"], responses=ERROR_RESPONSES)


@router.get(
    "/ops/queues",
    summary="Each queue's depth, in-flight count and DLQ depth (operators)",
)
def read_queues(operator: Operator, web: Web) -> Envelope[Queues]:
    # The queues and DLQs template.yaml passes in (*_QUEUE_URL, *_DLQ_URL), none hard-coded.
    settings = web.services.settings
    dlqs = settings.dead_letter_queues()
    configured = {
        name: (url, dlqs[name][0] if name in dlqs else None)
        for name, url in settings.queue_urls().items()
        if url
    }
    found = queue_health(web.services.aws.client("sqs"), configured)
    names = [q.name for q in found.queues]
    return web.ok(found, "getQueueHealth", "queue", names, headers={"Cache-Control": "no-store"})


def _dlqs(web: WebContext, name: str | None) -> list[DeadLetterQueue]:
    return dead_letters.queues(web.services.settings.dead_letter_queues(), name)


@router.get(
    "/ops/dead-letters",
    summary="List dead-lettered messages with their reason, without consuming them (operators)",
)
def list_dead_letters(
    operator: Operator,
    web: Web,
    queue: Annotated[
        str | None,
        Query(max_length=64, description="The source queue's name (notifications, llm, sync)"),
    ] = None,
) -> Envelope[list[DeadLetter]]:
    services = web.services
    letters = dead_letters.list_dead_letters(
        services.database, services.aws.client("sqs"), _dlqs(web, queue)
    )
    return web.ok(letters, "listDeadLetters", "deadLetter", [m.message_id for m in letters])


@router.post(
    "/ops/dead-letters/replay",
    summary="Replay dead-lettered messages to their source queue; safe to repeat (operators)",
    responses={409: ERROR_RESPONSES[404]},
)
def replay_dead_letters(
    operator: Operator, body: ReplayRequest, web: Write
) -> Envelope[ReplayOutcome]:
    services = web.services
    dlqs = _dlqs(web, body.queue)  # an unknown queue is refused before the key is taken
    result = web.run_outside_database(
        ReplayOutcome,
        "replayDeadLetters",
        body.model_dump(mode="json"),
        operator.clinic_id,
        lambda: dead_letters.replay(
            lambda: services.unit_of_work(request_id=web.request_id),
            services.aws.client("sqs"),
            dlqs,
            body.messageIds,
        ),
    )
    return web.ok(result, "replayDeadLetters", "deadLetter", result.replayed)


@router.get(
    "/ops/jobs/stuck",
    summary="Jobs left behind, every clinic's: overdue, rescued, given up (operators)",
)
def read_stuck_jobs(operator: Operator, web: Web) -> Envelope[stuck_jobs.StuckJobs]:
    services = web.services
    policy = stuck_jobs.RescuePolicy.from_settings(services.settings)
    found = stuck_jobs.stuck_jobs(services.database, policy)
    return web.ok(found, "getStuckJobs", "job", headers={"Cache-Control": "no-store"})


@router.get(
    "/ops/jobs",
    summary="Jobs per kind in a window, every clinic's: counts by status, p50/p95, error rate",
)
def read_job_metrics(
    operator: Operator,
    web: Web,
    hours: Annotated[
        int,
        Query(
            ge=1,
            le=job_metrics.MAX_WINDOW_HOURS,
            description="the window: jobs created in the last `hours` hours",
        ),
    ] = job_metrics.DEFAULT_WINDOW_HOURS,
) -> Envelope[job_metrics.JobMetrics]:
    # Aggregates over every clinic's jobs: the replica when there is one.
    found = job_metrics.job_metrics(web.services.reader, hours=hours)
    kinds = [k.kind for k in found.kinds if k.kind]
    return web.ok(found, "getJobMetrics", "job", kinds, headers={"Cache-Control": "no-store"})
