"""Assistant chat, the request path: a staff question is accepted at once, the model
answers from the queue (frontdesk.assistant.replies).

`ask` (and `start_conversation`) is one unit of work: it checks the clinic's budget, stores
the question, a queued reply row and its job; the hand-off sends the job to the llm queue
after the commit. Nothing waits for the model. The reads show the reply's progress.

A question can name a patient, so questions, replies and titles are envelope-encrypted like
leads (AAD 'messages:<id>:content', 'conversations:<id>:title'); rows stored before that
keep their plaintext column until Housekeeping encrypts them (`encrypt_plaintext`), and are
read from it meanwhile. Reads decrypt after their transaction has ended.

A question found in the reply cache (frontdesk.assistant.reply_cache) is answered in the
same unit of work: the reply is stored `done` and `cached`, its job already succeeded, no
budget charged, and `assistant.reply.done` (with `cached: true`) goes to the outbox.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Annotated, Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from frontdesk.assistant import reply_events
from frontdesk.assistant.reply_cache import CachedAnswer, CacheUse
from frontdesk.errors import NotFound, TooManyRequests
from frontdesk.platform import jobs
from frontdesk.platform.crypto import EnvelopeCipher, field_aad
from frontdesk.platform.db import Cursor, Database, transaction
from frontdesk.platform.queues import EventType, JobKind
from frontdesk.platform.unit_of_work import UnitOfWork
from frontdesk.values import ApiModel, MultiLine, SingleLine, Timestamp

CANCELLED = "cancelled before the reply was generated"

Question = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=4000), MultiLine
]
Title = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), SingleLine
]


class QuestionIn(BaseModel):
    """A staff question in an existing conversation."""

    model_config = ConfigDict(extra="forbid")

    content: Question
    cache: bool = Field(
        default=True, description="false: do not answer from the reply cache (ask the model)"
    )


class ConversationIn(BaseModel):
    """A new conversation and its first question."""

    model_config = ConfigDict(extra="forbid")

    content: Question
    title: Title | None = None
    cache: bool = Field(
        default=True, description="false: do not answer from the reply cache (ask the model)"
    )


@dataclass(frozen=True)
class Budget:
    requests_per_minute: int
    tokens_per_day: int


# ---------------------------------------------------------------- request path


class ReplyAccepted(ApiModel):
    """A question accepted: the reply to poll (`id`) and the job that writes it; or, when it
    was answered from the reply cache, the reply already `done`, `cached`, with its
    `content` (the route adds it after the commit: the text the lookup found, or read back
    for an Idempotency-Key retry, as a stored response never holds the text)."""

    id: UUID
    conversation_id: UUID
    question_id: UUID
    job_id: UUID
    status: str
    cached: bool = False
    content: str | None = None


class MessageOut(ApiModel):
    id: UUID
    conversation_id: UUID
    role: str
    status: str
    content: str | None
    reply_to: UUID | None
    job_id: UUID | None
    provider: str | None
    model: str | None
    cached: bool
    input_tokens: int | None
    output_tokens: int | None
    latency_ms: int | None
    error: str | None
    created_at: Timestamp
    completed_at: Timestamp | None


class ConversationOut(ApiModel):
    id: UUID
    title: str | None
    created_at: Timestamp
    updated_at: Timestamp
    messages: list[MessageOut]


def start_conversation(
    uow: UnitOfWork,
    cipher: EnvelopeCipher,
    *,
    clinic_id: UUID,
    conversation: ConversationIn,
    budget: Budget,
    created_by: str,
    cache: CacheUse | None = None,
    cached: CachedAnswer | None = None,
) -> ReplyAccepted:
    """A conversation and its first question, in `uow`; answered at once when `cached`."""
    cur = uow.cur
    if cached is None:
        _charge_request(cur, clinic_id, budget)
    conversation_id = uuid.uuid4()
    key = cipher.data_key()
    cur.execute(
        """INSERT INTO conversations (id, clinic_id, title_enc, dek, kms_key_id, created_by)
           VALUES (%(id)s, %(clinic_id)s, %(title)s, %(dek)s, %(kms_key_id)s, %(created_by)s)""",
        {
            "id": conversation_id,
            "clinic_id": clinic_id,
            "title": cipher.encrypt(
                key, conversation.title, field_aad("conversations", conversation_id, "title")
            ),
            "dek": key.encrypted,
            "kms_key_id": key.kms_key_id,
            "created_by": created_by,
        },
    )
    return _insert_question(
        uow, cipher, clinic_id, conversation_id, conversation.content, cache, cached
    )


def ask(
    uow: UnitOfWork,
    cipher: EnvelopeCipher,
    *,
    clinic_id: UUID,
    conversation_id: UUID,
    question: QuestionIn,
    budget: Budget,
    cache: CacheUse | None = None,
    cached: CachedAnswer | None = None,
) -> ReplyAccepted:
    """A question in an existing conversation of this clinic, in `uow`; answered at once
    when `cached`."""
    cur = uow.cur
    cur.execute(
        """UPDATE conversations SET updated_at = now()
           WHERE id = %(id)s AND clinic_id = %(clinic_id)s RETURNING id""",
        {"id": conversation_id, "clinic_id": clinic_id},
    )
    if cur.fetchone() is None:
        raise NotFound(f"conversation {conversation_id} not found")
    if cached is None:
        _charge_request(cur, clinic_id, budget)
    return _insert_question(
        uow, cipher, clinic_id, conversation_id, question.content, cache, cached
    )


def _charge_request(cur: Cursor, clinic_id: UUID, budget: Budget) -> None:
    """Count this request against the minute's limit, and refuse it when the minute's
    requests or the day's tokens are used up. Runs in the request's transaction, before any
    other write: a refusal rolls the count back and leaves nothing enqueued. The minute row
    is locked until commit, so concurrent requests of one clinic are counted exactly."""
    cur.execute(
        """INSERT INTO assistant_usage AS u (clinic_id, period, period_start, requests)
           VALUES (%(clinic_id)s, 'minute', date_trunc('minute', now()), 1)
           ON CONFLICT (clinic_id, period, period_start)
               DO UPDATE SET requests = u.requests + 1
           RETURNING requests,
                     extract(epoch FROM u.period_start + interval '1 minute' - now())::float8
                         AS resets_in,
                     (SELECT tokens FROM assistant_usage
                      WHERE clinic_id = %(clinic_id)s AND period = 'day'
                        AND period_start = date_trunc('day', now(), 'UTC')) AS tokens_today,
                     extract(epoch FROM date_trunc('day', now(), 'UTC') + interval '1 day'
                                        - now())::float8 AS day_resets_in""",
        {"clinic_id": clinic_id},
    )
    row = cur.fetchone()
    assert row is not None
    if row["requests"] > budget.requests_per_minute:
        raise TooManyRequests(
            f"the assistant takes at most {budget.requests_per_minute} questions a minute "
            "per clinic",
            math.ceil(row["resets_in"]),
        )
    if (row["tokens_today"] or 0) >= budget.tokens_per_day:
        raise TooManyRequests(
            f"the clinic's assistant budget of {budget.tokens_per_day} tokens a day is used up",
            math.ceil(row["day_resets_in"]),
        )


def _insert_question(
    uow: UnitOfWork,
    cipher: EnvelopeCipher,
    clinic_id: UUID,
    conversation_id: UUID,
    content: str,
    cache: CacheUse | None,
    cached: CachedAnswer | None,
) -> ReplyAccepted:
    question_id, reply_id = uuid.uuid4(), uuid.uuid4()
    key = cipher.data_key()
    payload = {"conversationId": str(conversation_id), "replyId": str(reply_id)}
    if cached is not None:
        # Answered from the cache: the job is written already succeeded, with no message.
        job_id = jobs.create_job(
            uow.cur,
            clinic_id=clinic_id,
            kind=JobKind.ASSISTANT_REPLY,
            payload=payload,
            request_id=uow.request_id,
        )
        jobs.finish(
            uow.cur,
            job_id,
            status="succeeded",
            result={"messageId": str(reply_id), "cached": True},
        )
    else:
        if cache is not None and cache.store:
            payload["cacheQuestion"] = cache.question_mac.hex()
        job_id = uow.start_job(JobKind.ASSISTANT_REPLY, clinic_id, payload)
    uow.cur.execute(
        """INSERT INTO messages (id, clinic_id, conversation_id, role, content_enc, dek,
                                 kms_key_id, status, reply_to, job_id, request_id, created_at,
                                 completed_at, cached, provider, model, latency_ms)
           VALUES (%(question_id)s, %(clinic_id)s, %(conversation_id)s, 'user', %(content)s,
                   %(dek)s, %(kms_key_id)s, 'done', NULL, NULL, %(request_id)s,
                   clock_timestamp(), clock_timestamp(), false, NULL, NULL, NULL),
                  (%(reply_id)s, %(clinic_id)s, %(conversation_id)s, 'assistant', %(answer)s,
                   %(answer_dek)s, %(answer_kms_key_id)s, %(reply_status)s, %(question_id)s,
                   %(job_id)s, %(request_id)s, clock_timestamp(),
                   CASE WHEN %(cached)s THEN clock_timestamp() END, %(cached)s,
                   %(provider)s, %(model)s, CASE WHEN %(cached)s THEN 0 END)""",
        {
            "question_id": question_id,
            "reply_id": reply_id,
            "clinic_id": clinic_id,
            "conversation_id": conversation_id,
            "content": cipher.encrypt(key, content, field_aad("messages", question_id, "content")),
            "dek": key.encrypted,
            "kms_key_id": key.kms_key_id,
            "job_id": job_id,
            "request_id": uow.request_id,
            "reply_status": "done" if cached else "queued",
            "cached": cached is not None,
            "answer": cipher.encrypt(
                key,
                cached.text if cached else None,
                field_aad("messages", reply_id, "content"),
            ),
            "answer_dek": key.encrypted if cached else None,
            "answer_kms_key_id": key.kms_key_id if cached else None,
            "provider": cached.provider if cached else None,
            "model": cached.model if cached else None,
        },
    )
    if cached is not None:
        reply = reply_events.ReplyRef(reply_id, conversation_id, clinic_id, job_id)
        uow.emit(
            EventType.ASSISTANT_REPLY_DONE,
            reply_events.done(reply, key, attempt=0, content=cached.text, cached=True),
        )
    return ReplyAccepted(
        id=reply_id,
        conversation_id=conversation_id,
        question_id=question_id,
        job_id=job_id,
        status="done" if cached else "queued",
        cached=cached is not None,
    )


# ---------------------------------------------------------------- reads

_MESSAGE_COLUMNS = """m.id, m.conversation_id, m.role, m.content, m.content_enc, m.dek,
    m.reply_to, m.job_id,
    -- a cancelled job's reply is failed, whether or not a worker has seen it yet
    CASE WHEN j.status = 'cancelled' AND m.status <> 'done' THEN 'failed' ELSE m.status END
        AS status,
    CASE WHEN j.status = 'cancelled' AND m.status <> 'done' THEN %(cancelled)s
         ELSE m.error END AS error,
    m.provider, m.model, m.cached, m.input_tokens, m.output_tokens, m.latency_ms,
    m.created_at, m.completed_at"""


def message_text(cipher: EnvelopeCipher, row: dict[str, Any]) -> str | None:
    """A messages row's content: decrypted, or the plaintext of a row stored before."""
    blob = row["content_enc"]
    if blob is None:
        legacy: str | None = row["content"]
        return legacy
    return cipher.decrypt(
        bytes(row["dek"]), bytes(blob), field_aad("messages", row["id"], "content")
    )


def _message(cipher: EnvelopeCipher, row: dict[str, Any]) -> MessageOut:
    return MessageOut.model_validate({**row, "content": message_text(cipher, row)})


def _title(cipher: EnvelopeCipher, row: dict[str, Any]) -> str | None:
    blob = row["title_enc"]
    if blob is None:
        legacy: str | None = row["title"]
        return legacy
    return cipher.decrypt(
        bytes(row["dek"]), bytes(blob), field_aad("conversations", row["id"], "title")
    )


def get_message(
    db: Database, cipher: EnvelopeCipher, *, clinic_id: UUID, message_id: UUID
) -> MessageOut:
    with transaction(db) as cur:
        cur.execute(
            f"""SELECT {_MESSAGE_COLUMNS} FROM messages m LEFT JOIN jobs j ON j.id = m.job_id
                WHERE m.id = %(id)s AND m.clinic_id = %(clinic_id)s""",
            {"id": message_id, "clinic_id": clinic_id, "cancelled": CANCELLED},
        )
        row = cur.fetchone()
    if row is None:
        raise NotFound(f"message {message_id} not found")
    return _message(cipher, row)


def get_conversation(
    db: Database,
    cipher: EnvelopeCipher,
    *,
    clinic_id: UUID,
    conversation_id: UUID,
    limit: int = 200,
) -> ConversationOut:
    with transaction(db) as cur:
        cur.execute(
            """SELECT id, title, title_enc, dek, created_at, updated_at FROM conversations
               WHERE id = %(id)s AND clinic_id = %(clinic_id)s""",
            {"id": conversation_id, "clinic_id": clinic_id},
        )
        conversation = cur.fetchone()
        if conversation is None:
            raise NotFound(f"conversation {conversation_id} not found")
        cur.execute(
            f"""SELECT * FROM (
                    SELECT {_MESSAGE_COLUMNS} FROM messages m
                    LEFT JOIN jobs j ON j.id = m.job_id
                    WHERE m.clinic_id = %(clinic_id)s AND m.conversation_id = %(id)s
                    ORDER BY m.created_at DESC LIMIT %(limit)s) recent
                ORDER BY created_at""",
            {"id": conversation_id, "clinic_id": clinic_id, "limit": limit, "cancelled": CANCELLED},
        )
        messages = cur.fetchall()
    return ConversationOut(
        id=conversation["id"],
        title=_title(cipher, conversation),
        created_at=conversation["created_at"],
        updated_at=conversation["updated_at"],
        messages=[_message(cipher, row) for row in messages],
    )


# ---------------------------------------------------------------- housekeeping

# A minute's request counter matters only during that minute.
_MINUTE_ROWS_KEPT = "1 hour"


def purge_usage(db: Database, *, older_than_days: int, limit: int) -> int:
    """Forget the budget's counters: minute rows after an hour, day rows (tokens per clinic
    and day) after the retention; at most `limit`."""
    with transaction(db) as cur:
        cur.execute(
            f"""DELETE FROM assistant_usage WHERE (clinic_id, period, period_start) IN (
                    SELECT clinic_id, period, period_start FROM assistant_usage
                    WHERE (period = 'minute'
                           AND period_start < now() - interval '{_MINUTE_ROWS_KEPT}')
                       OR (period = 'day'
                           AND period_start < now() - make_interval(days => %(days)s))
                    LIMIT %(limit)s)""",
            {"days": older_than_days, "limit": limit},
        )
        return cur.rowcount


def encrypt_plaintext(db: Database, cipher: EnvelopeCipher, *, limit: int) -> int:
    """Encrypt up to `limit` messages and titles stored in plaintext before questions were
    encrypted (migration 0009); returns how many. The data key is fetched before the
    transaction: no call to KMS inside it."""
    key = cipher.data_key()
    encrypt = cipher.encryptor(key)
    done = 0
    for table, column in (("messages", "content"), ("conversations", "title")):
        with transaction(db) as cur:
            cur.execute(
                f"""SELECT id, {column} AS text FROM {table} WHERE {column} IS NOT NULL
                    ORDER BY created_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED""",
                {"limit": limit},
            )
            found = cur.fetchall()
            if not found:
                continue
            cur.execute(
                f"""UPDATE {table} t SET {column}_enc = u.enc, dek = %(dek)s,
                           kms_key_id = %(kms_key_id)s, {column} = NULL
                    FROM unnest(%(ids)s::uuid[], %(enc)s::bytea[]) AS u(id, enc)
                    WHERE t.id = u.id""",
                {
                    "ids": [row["id"] for row in found],
                    "enc": [
                        encrypt(row["text"], field_aad(table, row["id"], column)) for row in found
                    ],
                    "dek": key.encrypted,
                    "kms_key_id": key.kms_key_id,
                },
            )
            done += len(found)
    return done
