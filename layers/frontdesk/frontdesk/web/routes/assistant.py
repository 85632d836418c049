"""Assistant chat routes: questions are accepted with 202 and answered by LlmWorker, or
answered at once (201, `cached: true`) from the reply cache
(frontdesk.assistant.reply_cache)."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from aws_lambda_powertools.metrics import MetricUnit, single_metric
from fastapi import APIRouter, Header

from frontdesk.assistant import conversations, reply_cache
from frontdesk.assistant.conversations import (
    Budget,
    ConversationIn,
    ConversationOut,
    MessageOut,
    QuestionIn,
    ReplyAccepted,
)
from frontdesk.assistant.reply_cache import CachedAnswer, CacheUse
from frontdesk.config import Settings
from frontdesk.web.auth import GuardedRoute, Staff
from frontdesk.web.context import Web, Write, WriteContext
from frontdesk.web.http import ERROR_RESPONSES, Envelope

router = APIRouter(
    route_class=GuardedRoute,
    tags=["assistant"],
    responses={**ERROR_RESPONSES, 429: ERROR_RESPONSES[503]},
)

# A hit answers at once; its response's shape is the 202's.
_ANSWERED: dict[int | str, dict[str, Any]] = {
    201: {
        "model": Envelope[ReplyAccepted],
        "description": "Answered from the reply cache: the reply is done, `cached: true`, "
        "with its content",
    }
}

CacheControl = Annotated[
    str | None,
    Header(
        alias="Cache-Control",
        description="no-cache: do not answer from the reply cache; no-store: nor store the "
        "answer in it",
    ),
]

# How long a client should wait before its first poll of the reply.
POLL_AFTER_SECONDS = 1


def budget(settings: Settings) -> Budget:
    return Budget(
        requests_per_minute=settings.assistant_requests_per_minute,
        tokens_per_day=settings.assistant_tokens_per_day,
    )


def _cache_use(
    web: WriteContext, clinic_id: UUID, content: str, body_cache: bool, cache_control: str | None
) -> CacheUse:
    services = web.services
    mac = services.blind_index.reply_question(clinic_id, content)
    enabled = services.settings.assistant_reply_cache_ttl_seconds > 0
    return CacheUse.of(mac, body_cache=body_cache, cache_control=cache_control, enabled=enabled)


def _look_up(
    web: WriteContext, clinic_id: UUID, conversation_id: UUID | None, use: CacheUse
) -> CachedAnswer | None:
    """The cached answer, if the question may be answered from the cache; counts the hit or
    the miss (AssistantReplyCacheHits / AssistantReplyCacheMisses)."""
    if not use.look_up:
        return None
    services = web.services
    found = reply_cache.look_up(
        services.database,
        services.cipher,
        clinic_id=clinic_id,
        conversation_id=conversation_id,
        question_mac=use.question_mac,
        history_messages=services.settings.llm_history_messages,
    )
    # The API flushes no metrics per invocation: one EMF line per lookup, written now.
    name = "AssistantReplyCacheHits" if found else "AssistantReplyCacheMisses"
    with single_metric(
        name=name,
        unit=MetricUnit.Count,
        value=1,
        namespace="Frontdesk",
        default_dimensions={"service": "frontdesk"},
    ):
        pass
    return found


def _accepted(
    web: WriteContext, staff: Staff, accepted: ReplyAccepted, cached: CachedAnswer | None
) -> Envelope[ReplyAccepted]:
    headers = {"Location": f"/assistant/messages/{accepted.id}"}
    if accepted.status == "done":
        # Answered from the cache: with the text this request found; a retry with the same
        # Idempotency-Key reads it back (the stored response does not keep it).
        content: str | None
        if cached is not None and "Idempotent-Replayed" not in web.response.headers:
            content = cached.text
        else:
            services = web.services
            content = conversations.get_message(
                services.database,
                services.cipher,
                clinic_id=staff.clinic_id,
                message_id=accepted.id,
            ).content
        accepted = accepted.model_copy(update={"content": content})
        web.response.status_code = 201
    else:
        headers["Retry-After"] = str(POLL_AFTER_SECONDS)
    return web.ok(
        accepted, "askAssistant", "message", [accepted.id, accepted.question_id], headers=headers
    )


@router.post(
    "/assistant/conversations",
    status_code=202,
    summary="Start a conversation with its first question; poll the reply at Location",
    responses=_ANSWERED,
)
def start_conversation(
    staff: Staff, body: ConversationIn, web: Write, cache_control: CacheControl = None
) -> Envelope[ReplyAccepted]:
    use = _cache_use(web, staff.clinic_id, body.content, body.cache, cache_control)
    cached = _look_up(web, staff.clinic_id, None, use)
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
            cache=use,
            cached=cached,
        ),
    )
    return _accepted(web, staff, accepted, cached)


@router.post(
    "/assistant/conversations/{conversation_id}/messages",
    status_code=202,
    summary="Ask a question in a conversation; poll the reply at Location",
    responses=_ANSWERED,
)
def ask(
    staff: Staff,
    conversation_id: UUID,
    body: QuestionIn,
    web: Write,
    cache_control: CacheControl = None,
) -> Envelope[ReplyAccepted]:
    use = _cache_use(web, staff.clinic_id, body.content, body.cache, cache_control)
    cached = _look_up(web, staff.clinic_id, conversation_id, use)
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
            cache=use,
            cached=cached,
        ),
    )
    return _accepted(web, staff, accepted, cached)


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
