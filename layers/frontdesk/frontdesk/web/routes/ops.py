"""Operator routes (platform operators only): queue health."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from frontdesk.config import get_settings
from frontdesk.ops.queue_health import queue_health
from frontdesk.platform.aws import client
from frontdesk.web.auth import Operator
from frontdesk.web.http import ERROR_RESPONSES, Envelope, envelope

router = APIRouter(tags=["ops"], responses=ERROR_RESPONSES)


class QueueHealth(BaseModel):
    name: str
    depth: int | None
    inFlight: int | None
    delayed: int | None
    ageOfOldestMessageSeconds: float | None
    ageNote: str
    dlqDepth: int | None
    error: str | None


class Queues(BaseModel):
    queues: list[QueueHealth]


@router.get(
    "/ops/queues",
    response_model=Envelope[Queues],
    summary="Each queue's depth, in-flight count and DLQ depth (operators)",
)
def read_queues(request: Request, operator: Operator) -> JSONResponse:
    # The queues and DLQs template.yaml passes in (*_QUEUE_URL, *_DLQ_URL), none hard-coded.
    settings = get_settings()
    dead_letters = settings.dead_letter_queues()
    configured = {
        name: (url, dead_letters[name][0] if name in dead_letters else None)
        for name, url in settings.queue_urls().items()
        if url
    }
    queues: list[dict[str, Any]] = queue_health(client("sqs"), configured)
    return envelope(
        request,
        {"queues": queues},
        operation="getQueueHealth",
        entity="queue",
        affected_ids=[q["name"] for q in queues],
        headers={"Cache-Control": "no-store"},
    )
