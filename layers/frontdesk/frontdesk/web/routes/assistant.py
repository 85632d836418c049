"""Assistant chat routes: questions are accepted with 202 and answered by LlmWorker."""

from __future__ import annotations

from functools import cache
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from frontdesk.assistant import conversations as assistant
from frontdesk.config import get_settings
from frontdesk.platform.db import get_database
from frontdesk.platform.idempotency import IdempotencyRequest, Outcome
from frontdesk.platform.outbox import Publisher, default_publisher
from frontdesk.web.auth import Staff
from frontdesk.web.http import ERROR_RESPONSES, Envelope, envelope
from frontdesk.web.routes.leads import IdempotencyKey

router = APIRouter(tags=["assistant"], responses={**ERROR_RESPONSES, 429: ERROR_RESPONSES[503]})

# How long a client should wait before its first poll of the reply.
POLL_AFTER_SECONDS = 1


class ReplyAccepted(BaseModel):
    id: UUID
    conversationId: UUID
    questionId: UUID
    jobId: UUID
    status: str


class Message(BaseModel):
    id: UUID
    conversationId: UUID
    role: str
    status: str
    content: str | None
    replyTo: UUID | None
    jobId: UUID | None
    provider: str | None
    model: str | None
    inputTokens: int | None
    outputTokens: int | None
    latencyMs: int | None
    error: str | None
    createdAt: str
    completedAt: str | None


class Conversation(BaseModel):
    id: UUID
    title: str | None
    createdAt: str
    updatedAt: str
    messages: list[Message]


@cache
def publisher() -> Publisher:
    return default_publisher()


def _budget() -> assistant.Budget:
    settings = get_settings()
    return assistant.Budget(
        requests_per_minute=settings.assistant_requests_per_minute,
        tokens_per_day=settings.assistant_tokens_per_day,
    )


def _accepted(request: Request, outcome: Outcome) -> JSONResponse:
    data: dict[str, Any] = outcome.data
    headers = {
        "Location": f"/assistant/messages/{data['id']}",
        "Retry-After": str(POLL_AFTER_SECONDS),
    }
    if outcome.replayed:
        headers["Idempotent-Replayed"] = "true"
    return envelope(
        request,
        data,
        operation="askAssistant",
        entity="message",
        affected_ids=[data["id"], data["questionId"]],
        status_code=outcome.status_code,
        headers=headers,
    )


@router.post(
    "/assistant/conversations",
    status_code=202,
    response_model=Envelope[ReplyAccepted],
    summary="Start a conversation with its first question; poll the reply at Location",
)
def start_conversation(
    request: Request,
    staff: Staff,
    body: assistant.ConversationIn,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    outcome = assistant.start_conversation(
        get_database(),
        publisher(),
        clinic_id=staff.clinic_id,
        conversation=body,
        budget=_budget(),
        created_by=staff.subject,
        request_id=request.state.request_id,
        idempotency=IdempotencyRequest.of(idempotency_key, "startConversation", body.model_dump()),
    )
    return _accepted(request, outcome)


@router.post(
    "/assistant/conversations/{conversation_id}/messages",
    status_code=202,
    response_model=Envelope[ReplyAccepted],
    summary="Ask a question in a conversation; poll the reply at Location",
)
def ask(
    request: Request,
    staff: Staff,
    conversation_id: UUID,
    body: assistant.QuestionIn,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    outcome = assistant.ask(
        get_database(),
        publisher(),
        clinic_id=staff.clinic_id,
        conversation_id=conversation_id,
        question=body,
        budget=_budget(),
        request_id=request.state.request_id,
        idempotency=IdempotencyRequest.of(
            idempotency_key, "askAssistant", [str(conversation_id), body.model_dump()]
        ),
    )
    return _accepted(request, outcome)


@router.get(
    "/assistant/messages/{message_id}",
    response_model=Envelope[Message],
    summary="A message: the reply's status (queued, thinking, done, failed) and, when done, "
    "its content",
)
def read_message(request: Request, staff: Staff, message_id: UUID) -> JSONResponse:
    message = assistant.get_message(
        get_database(), clinic_id=staff.clinic_id, message_id=message_id
    )
    return envelope(
        request, message, operation="getMessage", entity="message", affected_ids=[str(message_id)]
    )


@router.get(
    "/assistant/conversations/{conversation_id}",
    response_model=Envelope[Conversation],
    summary="A conversation and its recent messages, oldest first",
)
def read_conversation(request: Request, staff: Staff, conversation_id: UUID) -> JSONResponse:
    conversation = assistant.get_conversation(
        get_database(), clinic_id=staff.clinic_id, conversation_id=conversation_id
    )
    return envelope(
        request,
        conversation,
        operation="getConversation",
        entity="conversation",
        affected_ids=[str(conversation_id)],
    )
