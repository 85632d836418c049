"""Assistant chat, the worker path: one llm queue message -> at most one stored reply,
streamed to staff as it is generated.

`answer`, per job message:
1. a short transaction reads the job and reply row (locking them), asks the shared circuit
   breaker, claims the reply (status 'thinking'), counts the attempt and reads the context:
   recent history, the clinic's profile and a few counts;
2. the model streams its answer with no transaction open and no connection checked out
   while it is waited on. Its chunks are coalesced into a few deltas a second (the first at
   once; LLM_DELTA_INTERVAL_MS): each is one short unit of work between two chunks, which
   checks that the job is still running (a cancelled job stops the stream, and the model
   call with it) and writes an `assistant.reply.delta` event to the outbox, relayed right
   after its commit (frontdesk.platform.handoff.RelayNow), not when the invocation ends;
3. a last short transaction writes the reply, finishes the job, adds the tokens to the
   day's usage, closes the breaker, stores the answer in the reply cache (when the job's
   payload carries the question's MAC; frontdesk.assistant.reply_cache) and emits the last
   delta and `assistant.reply.done`.
   Every way a reply fails emits `assistant.reply.done` with status `failed` too.
A redelivered job finds its reply done (or claimed by a live worker) and does nothing: one
reply row per job, written once. A worker that dies mid-stream leaves its claim to expire;
the retry streams again from the start as the next attempt, and its first delta says
`reset: true` (frontdesk.assistant.reply_events describes the events and what they carry:
the text encrypted, never plaintext).

Deltas are best effort, the reply and `done` are not: once a relay of the attempt fails
(EventBridge unreachable; the first is the job's start event), the rest of the attempt sends
no more deltas (the sweeper sends what failed, late) and staff get the whole reply with
`done`, which is in the reply's own transaction.

The conversation is stored encrypted (frontdesk.assistant.conversations): the history is
decrypted after the first transaction has ended, and every text written (each delta, the
reply) is encrypted before its transaction begins, so a call to KMS never happens inside a
transaction either.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

from frontdesk.assistant import context, reply_cache, reply_events
from frontdesk.assistant.conversations import CANCELLED, message_text
from frontdesk.assistant.llm import (
    ChatModel,
    ChatStream,
    ChatTurn,
    Completion,
    PermanentModelError,
    TransientModelError,
)
from frontdesk.assistant.reply_events import Coalescer, ReplyRef
from frontdesk.platform import breaker, jobs
from frontdesk.platform.crypto import DataKey, EnvelopeCipher, field_aad
from frontdesk.platform.db import Cursor, Database
from frontdesk.platform.handoff import RelayNow, Relays
from frontdesk.platform.queues import EventType, JobMessage
from frontdesk.platform.unit_of_work import UnitOfWork


@dataclass(frozen=True)
class WorkerPolicy:
    breaker_threshold: int
    breaker_cooldown_seconds: float
    history_messages: int
    # At most one delta per this many seconds (the first at once); 0: every chunk.
    delta_interval_seconds: float = 0.25
    # No text from the model within this long (or this long silent mid-stream): a timeout.
    # None: the call's whole timeout.
    first_token_seconds: float | None = None
    # How long a stored answer stays in the reply cache; 0: answers are not stored.
    cache_ttl_seconds: int = 0


@dataclass(frozen=True)
class Answer:
    outcome: Literal["done", "already_done", "busy", "cancelled", "failed", "wait"]
    wait_seconds: float = 0.0
    tokens: int = 0
    deltas: int = 0


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
    relay: Relays,
) -> Answer:
    """Generate, stream and store the reply of one job, at most once."""
    handoff = RelayNow(relay)
    # 1. short transaction: what is there to do, may we call, claim, read the context
    with UnitOfWork(db, handoff) as uow:
        cur = uow.cur
        cur.execute(
            """SELECT j.status AS job_status, j.attempts, j.payload, m.id AS reply_id,
                      m.status, m.conversation_id, m.reply_to,
                      (SELECT q.created_at FROM messages q WHERE q.id = m.reply_to) AS asked_at,
                      coalesce(m.claimed_until > now(), false) AS claimed
               FROM jobs j
               JOIN messages m ON m.job_id = j.id AND m.clinic_id = j.clinic_id
               WHERE j.id = %(job_id)s AND j.clinic_id = %(clinic_id)s
               FOR UPDATE OF j, m""",
            {"job_id": message.job_id, "clinic_id": message.clinic_id},
        )
        job = cur.fetchone()
        if job is None:
            return Answer("already_done")  # not this clinic's job, or gone
        reply = ReplyRef(job["reply_id"], job["conversation_id"], message.clinic_id, message.job_id)
        if job["job_status"] == "cancelled":
            _fail_reply(cur, reply.reply_id, CANCELLED)
            if job["status"] not in ("done", "failed"):
                _emit_failed(uow, reply, job["attempts"], CANCELLED)
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
               WHERE id = %(job_id)s
               RETURNING attempts""",
            {"job_id": message.job_id},
        )
        attempt = _one(cur)["attempts"]
        cur.execute(
            """UPDATE messages SET status = 'thinking', updated_at = now(), error = NULL,
                      claimed_until = now() + make_interval(secs => %(claim)s)
               WHERE id = %(id)s""",
            {"id": reply.reply_id, "claim": timeout_seconds + 15},
        )
        system = context.system_prompt(cur, message.clinic_id, message.job_id)
        history = context.history(
            cur,
            message.clinic_id,
            job["conversation_id"],
            until=job["asked_at"],
            limit=max(1, policy.history_messages),
        )
    turns = [ChatTurn(row["role"], message_text(cipher, row) or "") for row in history]
    cache_key = _cache_key(message.clinic_id, job, system, history, policy)

    # 2. the stream: no transaction open while the model is waited on; a short unit of work
    # per delta, between two chunks
    started = time.perf_counter()
    deltas = _Deltas(db, cipher, handoff, reply, attempt, policy.delta_interval_seconds)
    try:
        completion = deltas.forward(
            model.stream(
                system,
                turns,
                timeout_seconds=timeout_seconds,
                first_token_seconds=policy.first_token_seconds,
            )
        )
    except _Stopped as stopped:
        return Answer("cancelled" if stopped.status == "cancelled" else "already_done")
    except PermanentModelError as exc:
        with UnitOfWork(db, handoff) as uow:
            breaker.record_success(uow.cur, model.breaker_name)  # it answered; the request was bad
            _fail_reply(uow.cur, reply.reply_id, str(exc))
            jobs.finish(uow.cur, message.job_id, status="failed", error=str(exc))
            _emit_failed(uow, reply, attempt, str(exc))
        return Answer("failed", deltas=deltas.sent)
    except TransientModelError as exc:
        with UnitOfWork(db, handoff) as uow:
            cur = uow.cur
            breaker.record_failure(
                cur,
                model.breaker_name,
                threshold=policy.breaker_threshold,
                cooldown_seconds=policy.breaker_cooldown_seconds,
            )
            if last_attempt:
                error = f"gave up after the last attempt: {exc}"
                _fail_reply(cur, reply.reply_id, error)
                jobs.finish(cur, message.job_id, status="dead", error=str(exc))
                _emit_failed(uow, reply, attempt, error)
            else:
                cur.execute(
                    """UPDATE messages SET status = 'queued', claimed_until = NULL,
                              error = %(error)s, updated_at = now()
                       WHERE id = %(id)s AND status = 'thinking'""",
                    {"id": reply.reply_id, "error": f"will retry: {exc}"},
                )
                jobs.record_error(cur, message.job_id, str(exc))
        raise ReplyDeferred(str(exc), exc.retry_after_seconds, dead=last_attempt) from exc
    latency_ms = round((time.perf_counter() - started) * 1000)
    key = cipher.data_key()
    text = cipher.encrypt(key, completion.text, field_aad("messages", reply.reply_id, "content"))
    last_delta = deltas.last(key)
    done = reply_events.done(reply, key, attempt=attempt, content=completion.text)
    entry = None
    if cache_key is not None:
        entry = reply_cache.Entry.seal(
            key,
            clinic_id=message.clinic_id,
            key=cache_key,
            answer=completion.text,
            provider=completion.provider,
            model=completion.model,
            ttl_seconds=policy.cache_ttl_seconds,
        )

    # 3. short transaction: the reply, the job, the usage, the breaker, the last events
    with UnitOfWork(db, handoff) as uow:
        cur = uow.cur
        stored = _store_reply(
            cur, message, reply.reply_id, completion, latency_ms, encrypted=(text, key)
        )
        if not stored:
            cur.execute("SELECT status FROM jobs WHERE id = %(id)s", {"id": message.job_id})
            row = cur.fetchone()
            if row is not None and row["status"] == "cancelled":
                _fail_reply(cur, reply.reply_id, CANCELLED)
                _emit_failed(uow, reply, attempt, CANCELLED)
                return Answer("cancelled", deltas=deltas.sent)
            return Answer("already_done", deltas=deltas.sent)
        jobs.finish(
            cur,
            message.job_id,
            status="succeeded",
            result={
                "messageId": str(reply.reply_id),
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
        if entry is not None:
            reply_cache.store(cur, entry)
        if last_delta is not None:
            uow.emit(EventType.ASSISTANT_REPLY_DELTA, last_delta)
        uow.emit(EventType.ASSISTANT_REPLY_DONE, done)
    return Answer(
        "done",
        tokens=completion.input_tokens + completion.output_tokens,
        deltas=deltas.sent + (last_delta is not None),
    )


class _Stopped(Exception):
    """The job is no longer running (cancelled, or finished by another delivery): the stream
    is abandoned."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


class _Deltas:
    """One attempt's deltas: the model's chunks coalesced, each delta a short unit of work."""

    def __init__(
        self,
        db: Database,
        cipher: EnvelopeCipher,
        handoff: RelayNow,
        reply: ReplyRef,
        attempt: int,
        interval_seconds: float,
    ) -> None:
        self._db = db
        self._cipher = cipher
        self._handoff = handoff
        self._reply = reply
        self._attempt = attempt
        self._coalescer = Coalescer(interval_seconds)
        self.sent = 0  # deltas written (seq of the last one)

    @property
    def _streaming(self) -> bool:
        """False once a delta could not be relayed: the rest of the attempt sends none."""
        return self._handoff.failures == 0

    def forward(self, stream: ChatStream) -> Completion:
        """Read the stream to its Completion, sending deltas as it goes; raises _Stopped when
        the job stops running (the stream, and the model call, are closed)."""
        with closing(stream):
            for piece in stream:
                if isinstance(piece, Completion):
                    return piece
                text = self._coalescer.add(piece, time.monotonic())
                if text is not None and self._streaming:
                    self._send(text)
        raise TransientModelError("the model's stream ended without an answer")

    def last(self, key: DataKey) -> dict[str, Any] | None:
        """The detail of the last delta (what has not been sent), for the reply's own
        transaction; None when there is nothing left or deltas have stopped."""
        text = self._coalescer.rest()
        if not text or not self._streaming:
            return None
        return self._detail(key, text)

    def _detail(self, key: DataKey, text: str) -> dict[str, Any]:
        self.sent += 1
        return reply_events.delta(self._reply, key, attempt=self._attempt, seq=self.sent, text=text)

    def _send(self, text: str) -> None:
        key = self._cipher.data_key()  # before the transaction: it may call KMS
        detail = self._detail(key, text)
        with UnitOfWork(self._db, self._handoff) as uow:
            uow.cur.execute("SELECT status FROM jobs WHERE id = %(id)s", {"id": self._reply.job_id})
            status = _one(uow.cur)["status"]
            if status == "running":
                uow.emit(EventType.ASSISTANT_REPLY_DELTA, detail)
            elif status == "cancelled":
                _fail_reply(uow.cur, self._reply.reply_id, CANCELLED)
                _emit_failed(uow, self._reply, self._attempt, CANCELLED)
        if status != "running":  # committed first: the cancelled reply reads failed
            raise _Stopped(status)


def _one(cur: Cursor) -> dict[str, Any]:
    row = cur.fetchone()
    assert row is not None
    return dict(row)


def _emit_failed(uow: UnitOfWork, reply: ReplyRef, attempt: int, error: str) -> None:
    uow.emit(
        EventType.ASSISTANT_REPLY_DONE, reply_events.failed(reply, attempt=attempt, error=error)
    )


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


def fail_replies_of(uow: UnitOfWork, job_ids: Sequence[UUID], error: str) -> int:
    """The replies of jobs given up on read failed, with why (and `assistant.reply.done`
    says so to whoever waits for them)."""
    uow.cur.execute(
        """UPDATE messages m SET status = 'failed', error = %(error)s, claimed_until = NULL,
                  completed_at = now(), updated_at = now()
           FROM jobs j
           WHERE m.job_id = ANY(%(ids)s::uuid[]) AND m.role = 'assistant'
             AND m.status <> 'done' AND j.id = m.job_id
           RETURNING m.id, m.conversation_id, m.clinic_id, m.job_id, j.attempts""",
        {"ids": list(job_ids), "error": error},
    )
    failed = uow.cur.fetchall()
    for row in failed:
        reply = ReplyRef(row["id"], row["conversation_id"], row["clinic_id"], row["job_id"])
        _emit_failed(uow, reply, row["attempts"], error)
    return len(failed)


def _fail_reply(cur: Cursor, reply_id: UUID, error: str) -> None:
    cur.execute(
        """UPDATE messages SET status = 'failed', error = %(error)s, claimed_until = NULL,
                  completed_at = now(), updated_at = now()
           WHERE id = %(id)s AND status <> 'done'""",
        {"id": reply_id, "error": error},
    )


def _cache_key(
    clinic_id: UUID,
    job: dict[str, Any],
    system: str,
    history: list[dict[str, Any]],
    policy: WorkerPolicy,
) -> bytes | None:
    """The reply cache's key for this answer, from the context the model is given; None
    when the answer is not to be stored (TTL 0, `no-store`, a job from before the cache)."""
    mac = (job["payload"] or {}).get("cacheQuestion")
    if policy.cache_ttl_seconds <= 0 or not isinstance(mac, str):
        return None
    if not history or history[-1]["id"] != job["reply_to"]:
        return None  # the question itself is not the last turn: nothing to key it by
    earlier = [row["id"] for row in history[:-1]]
    return reply_cache.cache_key(clinic_id, bytes.fromhex(mac), system, earlier)
