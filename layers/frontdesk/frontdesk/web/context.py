"""What a route needs besides its own parameters: the services, the request id, the answer.

A route is an adapter: it takes its typed input, calls one use case and answers with the
use case's typed result inside the envelope. `Web` gives a route the services and the
envelope; `Write` adds the unit of work with the request's Idempotency-Key (a route that
honours the header declares it through `Write`):

    def create_lead(staff: Staff, lead: LeadIn, web: Write) -> Envelope[LeadCreated]:
        created = web.run(LeadCreated, "createLead", lead, staff.clinic_id,
                          lambda uow: intake.create_lead(uow, ..., lead=lead))
        return web.ok(created, "createLead", "lead", [created.id])
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import Depends, Header, Request, Response
from pydantic import BaseModel

from frontdesk.platform import idempotency as idempotency_keys
from frontdesk.platform.idempotency import IdempotencyRequest
from frontdesk.platform.unit_of_work import UnitOfWork
from frontdesk.services import Services, get_services
from frontdesk.web.http import Envelope, Meta

# A write's data key is renewed before its transaction when it would expire within this.
DATA_KEY_MARGIN_SECONDS = 60


class WebContext:
    def __init__(self, request: Request, response: Response, services: Services) -> None:
        self.request = request
        self.response = response
        self.services = services

    @property
    def request_id(self) -> str:
        request_id: str = self.request.state.request_id
        return request_id

    def ok[T](
        self,
        data: T,
        operation: str,
        entity: str,
        affected_ids: Iterable[UUID | str] = (),
        *,
        headers: dict[str, str] | None = None,
    ) -> Envelope[T]:
        """The envelope of a successful answer: the data and its meta."""
        started = getattr(self.request.state, "started", time.perf_counter())
        if headers:
            self.response.headers.update(headers)
        return Envelope[T](
            data=data,
            meta=Meta(
                requestId=self.request_id,
                timestamp=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                operation=operation,
                entity=entity,
                success=True,
                affectedIds=[str(i) for i in affected_ids],
                executionTimeMs=round((time.perf_counter() - started) * 1000, 2),
            ),
        )


class WriteContext(WebContext):
    def __init__(
        self,
        request: Request,
        response: Response,
        services: Services,
        idempotency_key: str | None,
    ) -> None:
        super().__init__(request, response, services)
        self.idempotency_key = idempotency_key

    def run[R: BaseModel](
        self,
        result: type[R],
        operation: str,
        body: Any,
        clinic_id: UUID,
        use_case: Callable[[UnitOfWork], R],
        *,
        secret_result: bool = False,
    ) -> R:
        """`use_case` in one unit of work, once per Idempotency-Key: a retry with the same
        key and body answers the stored result (`Idempotent-Replayed: true`), another body
        is a 422. `operation` and `body` are what the key is checked against.
        `secret_result`: the result holds a secret, so it is stored encrypted."""
        idempotency = IdempotencyRequest.of(self.idempotency_key, operation, body)
        if self.services.settings.kms_key_id:
            # The data key the use case may encrypt with, fetched (if it is not cached) before
            # the transaction begins: a call to KMS never holds a transaction open.
            self.services.cipher.data_key(fresh_for=DATA_KEY_MARGIN_SECONDS)
        sealed_by = self.services.cipher if secret_result else None
        with self.services.unit_of_work(
            request_id=self.request_id, clinic_id=clinic_id, idempotency=idempotency
        ) as uow:
            done = uow.run(result, lambda: use_case(uow), sealed_by=sealed_by)
        if done.replayed:
            self.response.headers["Idempotent-Replayed"] = "true"
        return done.value

    def run_outside_database[R: BaseModel](
        self,
        result: type[R],
        operation: str,
        body: Any,
        clinic_id: UUID,
        call: Callable[[], R],
    ) -> R:
        """`run` for a write whose effect is not in the database (messages moved between
        queues): no transaction may span it, so the key is taken before `call` and the
        result stored after it, each in a short transaction of its own; a retry while it
        runs is a 409, a retry after it answers the stored result."""
        request = IdempotencyRequest.of(self.idempotency_key, operation, body)
        if request is None:
            return call()
        database = self.services.database
        stored = idempotency_keys.begin(database, clinic_id, request)
        if stored is not None:
            self.response.headers["Idempotent-Replayed"] = "true"
            return result.model_validate(stored)
        try:
            value = call()
        except BaseException:
            idempotency_keys.abandon(database, clinic_id, request)
            raise
        idempotency_keys.finish(
            database, clinic_id, request, value.model_dump(mode="json", by_alias=True)
        )
        return value


# FastAPI runs a `def` dependency in a worker thread: a thread hop each (and under Mangum a
# new worker thread per invocation, as anyio ends its workers with the invocation's task).
# The dependencies here do no I/O, so they are `async def` and run on the event loop; what
# does I/O (the form key's lookup, the routes) stays `def`.


async def container_services() -> Services:
    """The container's services, as a dependency."""
    return get_services()


ServicesDep = Annotated[Services, Depends(container_services)]


async def web_context(request: Request, response: Response, services: ServicesDep) -> WebContext:
    return WebContext(request, response, services)


async def write_context(
    request: Request,
    response: Response,
    services: ServicesDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Retries with the same key return the first response and write nothing new",
        ),
    ] = None,
) -> WriteContext:
    return WriteContext(request, response, services, idempotency_key)


Web = Annotated[WebContext, Depends(web_context)]
Write = Annotated[WriteContext, Depends(write_context)]
