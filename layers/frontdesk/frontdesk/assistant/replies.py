"""Assistant chat, the worker path: one llm queue message -> at most one stored reply.

`answer`, per job message:
1. a short transaction reads the job and reply row (locking them), asks the shared circuit
   breaker, claims the reply (status 'thinking') and reads the context: recent history, the
   clinic's profile and a few counts;
2. the model is called with no transaction and no connection checked out;
3. a second short transaction writes the reply, finishes the job, adds the tokens to the
   day's usage and closes the breaker.
A redelivered job finds its reply done (or claimed by a live worker) and does nothing: one
reply row per job, written once.

The conversation is stored encrypted (frontdesk.assistant.conversations): the history is
decrypted after the first transaction has ended and the reply encrypted before the last one
begins, so a call to KMS never happens inside a transaction either.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

from frontdesk.assistant.conversations import CANCELLED, message_text
from frontdesk.assistant.llm import (
    ChatModel,
    ChatTurn,
    Completion,
    PermanentModelError,
    TransientModelError,
)
from frontdesk.platform import breaker, jobs
from frontdesk.platform.crypto import DataKey, EnvelopeCipher, field_aad
from frontdesk.platform.db import Cursor, Database, transaction
from frontdesk.platform.queues import JobMessage


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
    cipher: EnvelopeCipher,
    model: ChatModel,
    message: JobMessage,
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
            # The message waits on the queue (re-sent with a delay): it is live, and the job
            # says so, or Housekeeping would take it for lost during a long outage.
            jobs.touch(cur, message.job_id)
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
        system, history = _context(cur, message.clinic_id, job, policy.history_messages)
    turns = [ChatTurn(row["role"], message_text(cipher, row) or "") for row in history]

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
    key = cipher.data_key()
    text = cipher.encrypt(key, completion.text, field_aad("messages", job["reply_id"], "content"))

    # 3. short transaction: the reply, the job, the usage, the breaker
    with transaction(db) as cur:
        stored = _store_reply(
            cur, message, job["reply_id"], completion, latency_ms, encrypted=(text, key)
        )
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
    message: JobMessage,
    reply_id: UUID,
    completion: Completion,
    latency_ms: int,
    *,
    encrypted: tuple[bytes | None, DataKey],
) -> bool:
    """Write the reply (its text encrypted) if this worker still holds it and the job was not
    cancelled meanwhile."""
    text, key = encrypted
    cur.execute(
        """UPDATE messages m SET status = 'done', content_enc = %(text)s, dek = %(dek)s,
                  kms_key_id = %(kms_key_id)s, provider = %(provider)s,
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
            "text": text,
            "dek": key.encrypted,
            "kms_key_id": key.kms_key_id,
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


def fail_replies_of(cur: Cursor, job_ids: Sequence[UUID], error: str) -> int:
    """The replies of jobs given up on read failed, with why."""
    cur.execute(
        """UPDATE messages SET status = 'failed', error = %(error)s, claimed_until = NULL,
                  completed_at = now(), updated_at = now()
           WHERE job_id = ANY(%(ids)s::uuid[]) AND role = 'assistant' AND status <> 'done'""",
        {"ids": list(job_ids), "error": error},
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
) -> tuple[str, list[dict[str, Any]]]:
    """The system prompt (clinic profile and numbers) and the conversation so far (its rows,
    still encrypted)."""
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
        """SELECT id, role, content, content_enc, dek FROM (
               SELECT id, role, content, content_enc, dek, created_at FROM messages
               WHERE clinic_id = %(clinic_id)s AND conversation_id = %(conversation_id)s
                 AND status = 'done' AND (content_enc IS NOT NULL OR content IS NOT NULL)
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
    turns = [dict(row) for row in cur.fetchall()]
    system = (
        f"You are the front-office assistant of {clinic['name']}, a clinic. Answer staff "
        "questions briefly and factually from these numbers; say when you do not know.\n"
        f"- clinic time zone: {clinic['timezone']}\n"
        f"- new leads this week: {clinic['leads_this_week']}\n"
        f"- new leads today: {clinic['leads_today']}\n"
        f"- open background jobs: {clinic['open_jobs']}\n"
    )
    return system, turns
