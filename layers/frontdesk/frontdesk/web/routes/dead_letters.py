"""Operations: dead-lettered messages, listed with their reason and replayed (operators)."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from frontdesk.config import get_settings
from frontdesk.ops import dead_letters
from frontdesk.platform.aws import client
from frontdesk.platform.db import get_database
from frontdesk.web.auth import Operator
from frontdesk.web.http import ERROR_RESPONSES, Envelope, envelope

router = APIRouter(tags=["operations"], responses=ERROR_RESPONSES)

QueueName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_-]*$")]


class DeadLetter(BaseModel):
    queue: str
    messageId: str
    receiveCount: int
    sentAt: str | None
    reason: str
    jobId: UUID | None
    jobStatus: str | None
    kind: str | None
    requestId: str | None


class ReplayRequest(BaseModel):
    """Either the ids of the messages to replay, or `all: true`."""

    model_config = ConfigDict(extra="forbid")

    queue: QueueName | None = None
    messageIds: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(
        default=None, min_length=1, max_length=1000
    )
    all: bool = False

    @model_validator(mode="after")
    def _one_choice(self) -> ReplayRequest:
        if self.all == (self.messageIds is not None):
            raise ValueError("name messageIds or set all to true (not both)")
        return self


class ReplayOutcome(BaseModel):
    replayed: list[str]
    notFound: list[str]
    jobsRequeued: int


def _queues(name: str | None) -> list[dead_letters.DeadLetterQueue]:
    return dead_letters.queues(get_settings().dead_letter_queues(), name)


@router.get(
    "/ops/dead-letters",
    response_model=Envelope[list[DeadLetter]],
    summary="List dead-lettered messages with their reason, without consuming them (operators)",
)
def list_dead_letters(
    request: Request,
    operator: Operator,
    queue: Annotated[
        str | None,
        Query(max_length=64, description="The source queue's name (notifications, llm, sync)"),
    ] = None,
) -> JSONResponse:
    letters = dead_letters.list_dead_letters(get_database(), client("sqs"), _queues(queue))
    data: list[dict[str, Any]] = [letter.as_dict() for letter in letters]
    return envelope(
        request,
        data,
        operation="listDeadLetters",
        entity="deadLetter",
        affected_ids=[letter.message_id for letter in letters],
    )


@router.post(
    "/ops/dead-letters/replay",
    response_model=Envelope[ReplayOutcome],
    summary="Replay dead-lettered messages to their source queue; safe to repeat (operators)",
)
def replay_dead_letters(request: Request, operator: Operator, body: ReplayRequest) -> JSONResponse:
    result = dead_letters.replay(
        get_database(), client("sqs"), _queues(body.queue), body.messageIds
    )
    return envelope(
        request,
        {
            "replayed": result.replayed,
            "notFound": result.not_found,
            "jobsRequeued": result.jobs_requeued,
        },
        operation="replayDeadLetters",
        entity="deadLetter",
        affected_ids=result.replayed,
    )
