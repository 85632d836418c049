"""Assistant chat routes: questions are accepted with 202 and answered by LlmWorker."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter

from frontdesk.assistant import conversations
from frontdesk.assistant.conversations import (
    Budget,
    ConversationIn,
    ConversationOut,
    MessageOut,
    QuestionIn,
    ReplyAccepted,
)
from frontdesk.config import Settings
from frontdesk.web.auth import GuardedRoute, Staff
from frontdesk.web.context import Web, Write, WriteContext
from frontdesk.web.http import ERROR_RESPONSES, Envelope

router = APIRouter(
    route_class=GuardedRoute,
    tags=["assistant"],
    responses={**ERROR_RESPONSES, 429: ERROR_RESPONSES[503]},
)

# How long a client should wait before its first poll of the reply.
POLL_AFTER_SECONDS = 1


def budget(settings: Settings) -> Budget:
    return Budget(
        requests_per_minute=settings.assistant_requests_per_minute,
        tokens_per_day=settings.assistant_tokens_per_day,
    )


def _accepted(web: WriteContext, accepted: ReplyAccepted) -> Envelope[ReplyAccepted]:
    headers = {
        "Location": f"/assistant/messages/{accepted.id}",
        "Retry-After": str(POLL_AFTER_SECONDS),
    }
    return web.ok(
        accepted, "askAssistant", "message", [accepted.id, accepted.question_id], headers=headers
    )


@router.post(
    "/assistant/conversations",
    status_code=202,
    summary="Start a conversation with its first question; poll the reply at Location",
)
def start_conversation(staff: Staff, body: ConversationIn, web: Write) -> Envelope[ReplyAccepted]:
    accepted = web.run(
        ReplyAccepted,
        "startConversation",
        body.model_dump(),
        staff.clinic_id,
        lambda uow: conversations.start_conversation(
            uow,
            web.services.cipher,
            clinic_id=staff.clinic_id,
            conversation=body,
            budget=budget(web.services.settings),
            created_by=staff.subject,
        ),
    )
    return _accepted(web, accepted)


@router.post(
    "/assistant/conversations/{conversation_id}/messages",
    status_code=202,
    summary="Ask a question in a conversation; poll the reply at Location",
)
def ask(
    staff: Staff, conversation_id: UUID, body: QuestionIn, web: Write
) -> Envelope[ReplyAccepted]:
    accepted = web.run(
        ReplyAccepted,
        "askAssistant",
        [str(conversation_id), body.model_dump()],
        staff.clinic_id,
        lambda uow: conversations.ask(
            uow,
            web.services.cipher,
            clinic_id=staff.clinic_id,
            conversation_id=conversation_id,
            question=body,
            budget=budget(web.services.settings),
        ),
    )
    return _accepted(web, accepted)


@router.get(
    "/assistant/messages/{message_id}",
    summary="A message: the reply's status (queued, thinking, done, failed) and, when done, "
    "its content",
)
def read_message(staff: Staff, message_id: UUID, web: Web) -> Envelope[MessageOut]:
    services = web.services
    message = conversations.get_message(
        services.database, services.cipher, clinic_id=staff.clinic_id, message_id=message_id
    )
    return web.ok(message, "getMessage", "message", [message_id])


@router.get(
    "/assistant/conversations/{conversation_id}",
    summary="A conversation and its recent messages, oldest first",
)
def read_conversation(staff: Staff, conversation_id: UUID, web: Web) -> Envelope[ConversationOut]:
    services = web.services
    conversation = conversations.get_conversation(
        services.database,
        services.cipher,
        clinic_id=staff.clinic_id,
        conversation_id=conversation_id,
    )
    return web.ok(conversation, "getConversation", "conversation", [conversation_id])
