"""The unit of work: one transaction, its Idempotency-Key, and the work it hands off.

Every write of the request path and of the workers is one `UnitOfWork`:

    with services.unit_of_work(request_id=rid, clinic_id=clinic, idempotency=key) as uow:
        created = uow.run(LeadCreated, lambda: create_lead(uow, ...))

Inside, the use case writes its rows with `uow.cur`, starts jobs (`start_job`: the `jobs`
row and its queue message), sends messages (`send`) and emits domain events (`emit`); the
messages and events are outbox rows in the same transaction, so they commit with the change
or not at all. `run` records the result under the Idempotency-Key in the same transaction,
and returns the stored result, writing nothing, when the key was used before.

Rows the transaction wrote through triggers (every change of a job's status or progress
publishes a job event) are collected before the commit and handed off with the others.
After the commit, and only then, the outbox rows go to the hand-off, which relays them to
SQS and EventBridge (after the response, where the runtime allows it); the OutboxSweeper
sends whatever it could not. Nothing else calls the relay.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self
from uuid import UUID

from pydantic import BaseModel

from frontdesk.platform import idempotency, jobs, outbox
from frontdesk.platform.db import Cursor, Database
from frontdesk.platform.idempotency import IdempotencyRequest
from frontdesk.platform.queues import EventType, JobKind, JobMessage, Queue

if TYPE_CHECKING:
    from frontdesk.platform.crypto import EnvelopeCipher


class Handoff(Protocol):
    """Takes the outbox ids of a committed unit of work and sees them relayed."""

    def submit(self, outbox_ids: Sequence[int]) -> None: ...


@dataclass(frozen=True)
class Done[R: BaseModel]:
    """A use case's result, and whether it is the stored answer of an earlier request."""

    value: R
    replayed: bool = False


class UnitOfWork:
    def __init__(
        self,
        database: Database,
        handoff: Handoff,
        *,
        request_id: str | None = None,
        clinic_id: UUID | None = None,
        idempotency: IdempotencyRequest | None = None,
    ) -> None:
        if idempotency is not None and clinic_id is None:
            raise ValueError("an Idempotency-Key is kept per clinic: give the clinic_id")
        self.request_id = request_id
        self.clinic_id = clinic_id
        self._database = database
        self._handoff = handoff
        self._idempotency = idempotency
        self._outbox_ids: list[int] = []
        self._stack: ExitStack | None = None
        self._cur: Cursor | None = None

    @property
    def cur(self) -> Cursor:
        if self._cur is None:
            raise RuntimeError("the unit of work is not open (use it in a with block)")
        return self._cur

    def __enter__(self) -> Self:
        stack = ExitStack()
        try:
            conn = stack.enter_context(self._database.connection())
            stack.enter_context(conn.transaction())
            self._cur = stack.enter_context(conn.cursor())
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        stack, cur = self._stack, self._cur
        assert stack is not None and cur is not None
        if exc_type is None:
            self._collect_triggered(cur)
        self._stack, self._cur = None, None
        # Commits (or rolls back, and converts driver errors) on the way out; never
        # swallows an error.
        stack.__exit__(exc_type, exc, traceback)
        if exc_type is None and self._outbox_ids:
            ids, self._outbox_ids = self._outbox_ids, []
            self._handoff.submit(ids)

    def _collect_triggered(self, cur: Cursor) -> None:
        """Outbox rows this transaction wrote through triggers (a job's status or progress,
        frontdesk.platform.jobs) join the hand-off with the ones added here."""
        cur.execute(
            """SELECT id FROM outbox
               WHERE sent_at IS NULL AND xmin = pg_current_xact_id_if_assigned()::xid"""
        )
        known = set(self._outbox_ids)
        self._outbox_ids += [int(r["id"]) for r in cur.fetchall() if int(r["id"]) not in known]

    # ------------------------------------------------------------ idempotency

    def run[R: BaseModel](
        self, result: type[R], write: Callable[[], R], *, sealed_by: EnvelopeCipher | None = None
    ) -> Done[R]:
        """`write` once per Idempotency-Key: its result is stored with the change; a request
        that repeats the key gets the stored result and writes nothing. `sealed_by`: the
        result holds a secret, store it encrypted (idempotency.seal)."""
        if self._idempotency is None:
            return Done(write())
        clinic_id, key = self.clinic_id, self._idempotency.key
        assert clinic_id is not None
        stored = idempotency.claim(self.cur, clinic_id, self._idempotency)
        if stored is not None:
            if sealed_by is not None:
                stored = idempotency.unseal(sealed_by, clinic_id, key, stored)
            return Done(result.model_validate(stored), replayed=True)
        value = write()
        response: Any = value.model_dump(mode="json", by_alias=True)
        if sealed_by is not None:
            response = idempotency.seal(sealed_by, clinic_id, key, response)
        idempotency.record(self.cur, clinic_id, self._idempotency, response)
        return Done(value)

    # ------------------------------------------------------------ hand-off

    def start_job(self, kind: JobKind, clinic_id: UUID, payload: dict[str, Any]) -> UUID:
        """A `jobs` row and its message on the kind's queue."""
        job_id = jobs.create_job(
            self.cur, clinic_id=clinic_id, kind=kind, payload=payload, request_id=self.request_id
        )
        self.send_job(kind, job_id, clinic_id)
        return job_id

    def send_job(self, kind: JobKind, job_id: UUID, clinic_id: UUID) -> None:
        """The message of an existing job (a continuation, a job revived)."""
        message = JobMessage(job_id=job_id, kind=kind, clinic_id=clinic_id)
        self.send(kind.queue, [message.body()])

    def send(self, queue: Queue, bodies: Sequence[dict[str, Any]]) -> None:
        """Messages that are not jobs (reminders), in one statement."""
        self._outbox_ids += outbox.add_messages(
            self.cur, queue=queue, bodies=bodies, request_id=self.request_id
        )

    def emit(self, event: EventType, detail: dict[str, Any]) -> str:
        """A domain event (ids, never plaintext PII); returns its stable `eventId`."""
        outbox_id, event_id = outbox.add_event(
            self.cur, detail_type=event, detail=detail, request_id=self.request_id
        )
        self._outbox_ids.append(outbox_id)
        return event_id
