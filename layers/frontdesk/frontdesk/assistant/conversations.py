"""Assistant chat: a staff question is accepted at once, the model answers from the queue.

Request path (`ask`): one transaction checks the clinic's budget, stores the question, a
queued reply row, its job and the outbox row; the relay sends the job to the llm queue
right after the commit. Nothing waits for the model.

Worker path (`answer`), per job message:
1. a short transaction reads the job and reply row (locking them), asks the shared circuit
   breaker, claims the reply (status 'thinking') and reads the context: recent history, the
   clinic's profile and a few counts;
2. the model is called with no transaction and no connection checked out;
3. a second short transaction writes the reply, finishes the job, adds the tokens to the
   day's usage and closes the breaker.
A redelivered job finds its reply done (or claimed by a live worker) and does nothing: one
reply row per job, written once.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from frontdesk.assistant.llm import (
    ChatModel,
    ChatTurn,
    Completion,
    PermanentModelError,
    TransientModelError,
)
from frontdesk.errors import NotFound, TooManyRequests
from frontdesk.platform import breaker, jobs, outbox
from frontdesk.platform.db import Cursor, Database, transaction
from frontdesk.platform.idempotency import IdempotencyRequest, Outcome, run_once
from frontdesk.platform.queues import parse_message

REPLY_JOB = "assistant.reply"
QUEUE = "llm"
CANCELLED = "cancelled before the reply was generated"

Question = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=4000)]
Title = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class QuestionIn(BaseModel):
    """A staff question in an existing conversation."""

    model_config = ConfigDict(extra="forbid")

    content: Question


class ConversationIn(BaseModel):
    """A new conversation and its first question."""

    model_config = ConfigDict(extra="forbid")

    content: Question
    title: Title | None = None


@dataclass(frozen=True)
class Budget:
    requests_per_minute: int
    tokens_per_day: int


# ---------------------------------------------------------------- request path


def start_conversation(
    db: Database,
    publisher: outbox.Publisher,
    *,
    clinic_id: UUID,
    conversation: ConversationIn,
    budget: Budget,
    created_by: str,
    request_id: str | None,
    idempotency: IdempotencyRequest | None = None,
) -> Outcome:
    """A conversation and its first question, in one transaction; 202 with the reply's id."""

    def write(cur: Cursor) -> tuple[dict[str, Any], list[int]]:
        _charge_request(cur, clinic_id, budget)
        conversation_id = uuid.uuid4()
        cur.execute(
            """INSERT INTO conversations (id, clinic_id, title, created_by)
               VALUES (%(id)s, %(clinic_id)s, %(title)s, %(created_by)s)""",
            {
                "id": conversation_id,
                "clinic_id": clinic_id,
                "title": conversation.title,
                "created_by": created_by,
            },
        )
        return _insert_question(cur, clinic_id, conversation_id, conversation.content, request_id)

    return _accept(db, publisher, clinic_id, idempotency, write)


def ask(
    db: Database,
    publisher: outbox.Publisher,
    *,
    clinic_id: UUID,
    conversation_id: UUID,
    question: QuestionIn,
    budget: Budget,
    request_id: str | None,
    idempotency: IdempotencyRequest | None = None,
) -> Outcome:
    """A question in an existing conversation of this clinic; 202 with the reply's id."""

    def write(cur: Cursor) -> tuple[dict[str, Any], list[int]]:
        cur.execute(
            """UPDATE conversations SET updated_at = now()
               WHERE id = %(id)s AND clinic_id = %(clinic_id)s RETURNING id""",
            {"id": conversation_id, "clinic_id": clinic_id},
        )
        if cur.fetchone() is None:
            raise NotFound(f"conversation {conversation_id} not found")
        _charge_request(cur, clinic_id, budget)
        return _insert_question(cur, clinic_id, conversation_id, question.content, request_id)

    return _accept(db, publisher, clinic_id, idempotency, write)


def _accept(
    db: Database,
    publisher: outbox.Publisher,
    clinic_id: UUID,
    idempotency: IdempotencyRequest | None,
    write: Callable[[Cursor], tuple[dict[str, Any], list[int]]],
) -> Outcome:
    with transaction(db) as cur:
        outcome, outbox_ids = run_once(
            cur, clinic_id, idempotency, 202, lambda: write(cur), nothing=list[int]()
        )
    outbox.relay(db, outbox_ids, publisher)
    return outcome


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
    cur: Cursor, clinic_id: UUID, conversation_id: UUID, content: str, request_id: str | None
) -> tuple[dict[str, Any], list[int]]:
    question_id, reply_id = uuid.uuid4(), uuid.uuid4()
    job_id = jobs.create_job(
        cur,
        clinic_id=clinic_id,
        kind=REPLY_JOB,
        payload={"conversationId": str(conversation_id), "replyId": str(reply_id)},
        request_id=request_id,
    )
    cur.execute(
        """INSERT INTO messages (id, clinic_id, conversation_id, role, content, status,
                                 reply_to, job_id, request_id, created_at, completed_at)
           VALUES (%(question_id)s, %(clinic_id)s, %(conversation_id)s, 'user', %(content)s,
                   'done', NULL, NULL, %(request_id)s, clock_timestamp(), clock_timestamp()),
                  (%(reply_id)s, %(clinic_id)s, %(conversation_id)s, 'assistant', NULL,
                   'queued', %(question_id)s, %(job_id)s, %(request_id)s, clock_timestamp(),
                   NULL)""",
        {
            "question_id": question_id,
            "reply_id": reply_id,
            "clinic_id": clinic_id,
            "conversation_id": conversation_id,
            "content": content,
            "job_id": job_id,
            "request_id": request_id,
        },
    )
    outbox_id = outbox.enqueue_job_message(
        cur,
        queue=QUEUE,
        job_id=job_id,
        kind=REPLY_JOB,
        clinic_id=clinic_id,
        request_id=request_id,
    )
    data = {
        "id": str(reply_id),
        "conversationId": str(conversation_id),
        "questionId": str(question_id),
        "jobId": str(job_id),
        "status": "queued",
    }
    return data, [outbox_id]


# ---------------------------------------------------------------- reads

_MESSAGE_COLUMNS = """m.id, m.conversation_id, m.role, m.content, m.reply_to, m.job_id,
    -- a cancelled job's reply is failed, whether or not a worker has seen it yet
    CASE WHEN j.status = 'cancelled' AND m.status <> 'done' THEN 'failed' ELSE m.status END
        AS status,
    CASE WHEN j.status = 'cancelled' AND m.status <> 'done' THEN %(cancelled)s
         ELSE m.error END AS error,
    m.provider, m.model, m.input_tokens, m.output_tokens, m.latency_ms,
    m.created_at, m.completed_at"""


def _message_out(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "conversationId": row["conversation_id"],
        "role": row["role"],
        "status": row["status"],
        "content": row["content"],
        "replyTo": row["reply_to"],
        "jobId": row["job_id"],
        "provider": row["provider"],
        "model": row["model"],
        "inputTokens": row["input_tokens"],
        "outputTokens": row["output_tokens"],
        "latencyMs": row["latency_ms"],
        "error": row["error"],
        "createdAt": row["created_at"].isoformat(),
        "completedAt": row["completed_at"].isoformat() if row["completed_at"] else None,
    }


def get_message(db: Database, *, clinic_id: UUID, message_id: UUID) -> dict[str, Any]:
    with transaction(db) as cur:
        cur.execute(
            f"""SELECT {_MESSAGE_COLUMNS} FROM messages m LEFT JOIN jobs j ON j.id = m.job_id
                WHERE m.id = %(id)s AND m.clinic_id = %(clinic_id)s""",
            {"id": message_id, "clinic_id": clinic_id, "cancelled": CANCELLED},
        )
        row = cur.fetchone()
    if row is None:
        raise NotFound(f"message {message_id} not found")
    return _message_out(row)


def get_conversation(
    db: Database, *, clinic_id: UUID, conversation_id: UUID, limit: int = 200
) -> dict[str, Any]:
    with transaction(db) as cur:
        cur.execute(
            """SELECT id, title, created_at, updated_at FROM conversations
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
    return {
        "id": conversation["id"],
        "title": conversation["title"],
        "createdAt": conversation["created_at"].isoformat(),
        "updatedAt": conversation["updated_at"].isoformat(),
        "messages": [_message_out(row) for row in messages],
    }


# ---------------------------------------------------------------- worker path


class ReplyJobMessage(BaseModel):
    """The body of an llm queue message (written by outbox.enqueue_job_message)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: UUID = Field(alias="jobId")
    kind: Literal["assistant.reply"]
    clinic_id: UUID = Field(alias="clinicId")

    @classmethod
    def parse(cls, body: str) -> ReplyJobMessage:
        return parse_message(cls, body, "llm")


@dataclass(frozen=True)
class WorkerPolicy:
    breaker_threshold: int
    breaker_cooldown_seconds: float
    history_messages: int


@dataclass(frozen=True)
class Answer:
    outcome: Literal["done", "already_done", "busy", "cancelled", "failed", "wait"]
    wait_seconds: float = 0.0
    tokens: int = 0


class ReplyDeferred(Exception):
    """A transient model failure: the job stays open and the message must come back later."""

    def __init__(self, reason: str, retry_after_seconds: float | None, dead: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_seconds = retry_after_seconds
        self.dead = dead


def answer(
    db: Database,
    model: ChatModel,
    message: ReplyJobMessage,
    policy: WorkerPolicy,
    *,
    timeout_seconds: float,
    last_attempt: bool,
) -> Answer:
    """Generate and store the reply of one job, at most once."""
    # 1. short transaction: what is there to do, may we call, claim, read the context
    with transaction(db) as cur:
        cur.execute(
            """SELECT j.status AS job_status, m.id AS reply_id, m.status, m.conversation_id,
                      m.reply_to, coalesce(m.claimed_until > now(), false) AS claimed
               FROM jobs j
               JOIN messages m ON m.job_id = j.id AND m.clinic_id = j.clinic_id
               WHERE j.id = %(job_id)s AND j.clinic_id = %(clinic_id)s
               FOR UPDATE OF j, m""",
            {"job_id": message.job_id, "clinic_id": message.clinic_id},
        )
        job = cur.fetchone()
        if job is None:
            return Answer("already_done")  # not this clinic's job, or gone
        if job["job_status"] == "cancelled":
            _fail_reply(cur, job["reply_id"], CANCELLED)
            return Answer("cancelled")
        if job["job_status"] in jobs.TERMINAL or job["status"] in ("done", "failed"):
            return Answer("already_done")
        if job["status"] == "thinking" and job["claimed"]:
            # Another delivery of this job is with the model right now. Its own message stays
            # on the queue until it finishes, so this copy can go.
            return Answer("busy")
        admission = breaker.admit(cur, model.breaker_name, probe_lease_seconds=timeout_seconds)
        if not admission.allowed:
            return Answer("wait", wait_seconds=admission.wait_seconds)
        cur.execute(
            """UPDATE jobs SET status = 'running', attempts = attempts + 1,
                      started_at = coalesce(started_at, now()), updated_at = now(),
                      progress_message = 'the model is answering'
               WHERE id = %(job_id)s""",
            {"job_id": message.job_id},
        )
        cur.execute(
            """UPDATE messages SET status = 'thinking', updated_at = now(), error = NULL,
                      claimed_until = now() + make_interval(secs => %(claim)s)
               WHERE id = %(id)s""",
            {"id": job["reply_id"], "claim": timeout_seconds + 15},
        )
        system, turns = _context(cur, message.clinic_id, job, policy.history_messages)

    # 2. the model call: no transaction open, the connection back in the container's hands
    started = time.perf_counter()
    try:
        completion = model.complete(system, turns, timeout_seconds=timeout_seconds)
    except PermanentModelError as exc:
        with transaction(db) as cur:
            breaker.record_success(cur, model.breaker_name)  # it answered; the request was bad
            _fail_reply(cur, job["reply_id"], str(exc))
            jobs.finish(cur, message.job_id, status="failed", error=str(exc))
        return Answer("failed")
    except TransientModelError as exc:
        with transaction(db) as cur:
            breaker.record_failure(
                cur,
                model.breaker_name,
                threshold=policy.breaker_threshold,
                cooldown_seconds=policy.breaker_cooldown_seconds,
            )
            if last_attempt:
                _fail_reply(cur, job["reply_id"], f"gave up after the last attempt: {exc}")
                jobs.finish(cur, message.job_id, status="dead", error=str(exc))
            else:
                cur.execute(
                    """UPDATE messages SET status = 'queued', claimed_until = NULL,
                              error = %(error)s, updated_at = now()
                       WHERE id = %(id)s AND status = 'thinking'""",
                    {"id": job["reply_id"], "error": f"will retry: {exc}"},
                )
                jobs.record_error(cur, message.job_id, str(exc))
        raise ReplyDeferred(str(exc), exc.retry_after_seconds, dead=last_attempt) from exc
    latency_ms = round((time.perf_counter() - started) * 1000)

    # 3. short transaction: the reply, the job, the usage, the breaker
    with transaction(db) as cur:
        stored = _store_reply(cur, message, job["reply_id"], completion, latency_ms)
        if not stored:
            cur.execute("SELECT status FROM jobs WHERE id = %(id)s", {"id": message.job_id})
            row = cur.fetchone()
            if row is not None and row["status"] == "cancelled":
                _fail_reply(cur, job["reply_id"], CANCELLED)
                return Answer("cancelled")
            return Answer("already_done")
        jobs.finish(
            cur,
            message.job_id,
            status="succeeded",
            result={
                "messageId": str(job["reply_id"]),
                "inputTokens": completion.input_tokens,
                "outputTokens": completion.output_tokens,
            },
        )
        cur.execute(
            """INSERT INTO assistant_usage AS u (clinic_id, period, period_start, tokens)
               VALUES (%(clinic_id)s, 'day', date_trunc('day', now(), 'UTC'), %(tokens)s)
               ON CONFLICT (clinic_id, period, period_start)
                   DO UPDATE SET tokens = u.tokens + excluded.tokens""",
            {
                "clinic_id": message.clinic_id,
                "tokens": completion.input_tokens + completion.output_tokens,
            },
        )
        breaker.record_success(cur, model.breaker_name)
    return Answer("done", tokens=completion.input_tokens + completion.output_tokens)


def _store_reply(
    cur: Cursor,
    message: ReplyJobMessage,
    reply_id: UUID,
    completion: Completion,
    latency_ms: int,
) -> bool:
    """Write the reply if this worker still holds it and the job was not cancelled meanwhile."""
    cur.execute(
        """UPDATE messages m SET status = 'done', content = %(text)s, provider = %(provider)s,
                  model = %(model)s, input_tokens = %(input_tokens)s,
                  output_tokens = %(output_tokens)s, latency_ms = %(latency_ms)s,
                  error = NULL, claimed_until = NULL, completed_at = now(), updated_at = now()
           FROM jobs j
           WHERE m.id = %(id)s AND m.clinic_id = %(clinic_id)s AND m.status = 'thinking'
             AND j.id = m.job_id AND j.status = 'running'
           RETURNING m.id""",
        {
            "id": reply_id,
            "clinic_id": message.clinic_id,
            "text": completion.text,
            "provider": completion.provider,
            "model": completion.model,
            "input_tokens": completion.input_tokens,
            "output_tokens": completion.output_tokens,
            "latency_ms": latency_ms,
        },
    )
    return cur.fetchone() is not None


def requeue_replies(cur: Cursor, job_ids: Sequence[UUID]) -> int:
    """Replies given up on (their jobs dead) wait again: their messages are being replayed."""
    cur.execute(
        """UPDATE messages SET status = 'queued', claimed_until = NULL, completed_at = NULL,
                  updated_at = now()
           WHERE job_id = ANY(%(ids)s::uuid[]) AND role = 'assistant' AND status = 'failed'""",
        {"ids": list(job_ids)},
    )
    return cur.rowcount


def _fail_reply(cur: Cursor, reply_id: UUID, error: str) -> None:
    cur.execute(
        """UPDATE messages SET status = 'failed', error = %(error)s, claimed_until = NULL,
                  completed_at = now(), updated_at = now()
           WHERE id = %(id)s AND status <> 'done'""",
        {"id": reply_id, "error": error},
    )


def _context(
    cur: Cursor, clinic_id: UUID, job: dict[str, Any], history: int
) -> tuple[str, list[ChatTurn]]:
    """The system prompt (clinic profile and numbers) and the conversation so far."""
    cur.execute(
        """SELECT c.name, c.timezone,
                  (SELECT count(*) FROM leads l WHERE l.clinic_id = c.id
                     AND l.created_at >= date_trunc('week', now() AT TIME ZONE c.timezone)
                                         AT TIME ZONE c.timezone) AS leads_this_week,
                  (SELECT count(*) FROM leads l WHERE l.clinic_id = c.id
                     AND l.created_at >= date_trunc('day', now() AT TIME ZONE c.timezone)
                                         AT TIME ZONE c.timezone) AS leads_today,
                  (SELECT count(*) FROM jobs j WHERE j.clinic_id = c.id
                     AND j.status IN ('queued', 'running')) AS open_jobs
           FROM clinics c WHERE c.id = %(clinic_id)s""",
        {"clinic_id": clinic_id},
    )
    clinic = cur.fetchone()
    assert clinic is not None
    cur.execute(
        """SELECT role, content FROM (
               SELECT role, content, created_at FROM messages
               WHERE clinic_id = %(clinic_id)s AND conversation_id = %(conversation_id)s
                 AND status = 'done' AND content IS NOT NULL
                 AND created_at <= (SELECT created_at FROM messages WHERE id = %(question_id)s)
               ORDER BY created_at DESC LIMIT %(limit)s) recent
           ORDER BY created_at""",
        {
            "clinic_id": clinic_id,
            "conversation_id": job["conversation_id"],
            "question_id": job["reply_to"],
            "limit": max(1, history),
        },
    )
    turns = [ChatTurn(row["role"], row["content"]) for row in cur.fetchall()]
    system = (
        f"You are the front-office assistant of {clinic['name']}, a clinic. Answer staff "
        "questions briefly and factually from these numbers; say when you do not know.\n"
        f"- clinic time zone: {clinic['timezone']}\n"
        f"- new leads this week: {clinic['leads_this_week']}\n"
        f"- new leads today: {clinic['leads_today']}\n"
        f"- open background jobs: {clinic['open_jobs']}\n"
    )
    return system, turns
