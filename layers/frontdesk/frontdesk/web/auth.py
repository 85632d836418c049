"""Who is calling: staff (JWT claims) or a public web form (a clinic's form key).

In AWS the HTTP API's JWT authorizer has verified the token before the function runs and
passes its claims in the event; the function trusts those and nothing else. Without API
Gateway in front (an app served in process, only when LOCAL_JWT_SECRET is set) the token is
verified here (frontdesk.tokens), as strictly as API Gateway's JWT authorizer.

A token's clinic must exist (403 otherwise, on every route): it is looked up once per
container and clinic (`Services.known_clinics`), not on every request.

The caller is checked before the body is looked at: FastAPI parses a JSON body before it
resolves a route's dependencies, so a malformed body would otherwise answer 422 (and the
wrong media type 415) to a caller who may not use the route at all. Every route is a
`GuardedRoute`, which runs the route's own guards (`staff`, `admin`, `operator`,
`form_clinic`) before FastAPI's handler reads the body; the dependencies then find the
caller already resolved on the request.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any
from uuid import UUID

from fastapi import Depends, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from frontdesk.clinics import clinic_for_form_key
from frontdesk.errors import Forbidden, Unauthorized
from frontdesk.services import Services
from frontdesk.tokens import Principal, principal_of
from frontdesk.web.context import ServicesDep, container_services

bearer = HTTPBearer(auto_error=False, description="A staff JWT naming the clinic")
form_key_header = APIKeyHeader(
    name="X-Form-Key", auto_error=False, description="The clinic's public web form key"
)


def _claims(
    request: Request, credentials: HTTPAuthorizationCredentials | None, services: Services
) -> dict[str, Any]:
    event = request.scope.get("aws.event")
    if isinstance(event, dict):
        claims = event.get("requestContext", {}).get("authorizer", {}).get("jwt", {}).get("claims")
        if not isinstance(claims, dict):
            raise Unauthorized("a staff token is required")
        return claims
    if services.settings.local_jwt_secret is None or credentials is None:
        raise Unauthorized("a staff token is required")
    return services.tokens.verify(credentials.credentials)


async def staff(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    services: ServicesDep,
) -> Principal:
    """The staff member calling, from their token; their clinic must exist. `async`: the
    clinic's lookup is a query only once per container and clinic (Services.known_clinics),
    and a Lambda environment serves one request at a time."""
    known: Principal | None = getattr(request.state, "principal", None)
    if known is not None:
        return known
    principal = principal_of(_claims(request, credentials, services), services.settings)
    if not services.known_clinics.exists(principal.clinic_id):
        raise Forbidden("the token names no clinic")
    request.state.principal = principal
    return principal


def form_clinic(
    request: Request,
    form_key: Annotated[str | None, Depends(form_key_header)],
    services: ServicesDep,
) -> UUID:
    """The clinic whose public web form is posting (its X-Form-Key). `def`: the lookup is a
    query (FastAPI runs it in a worker thread)."""
    known: UUID | None = getattr(request.state, "form_clinic", None)
    if known is not None:
        return known
    if not form_key or len(form_key) > 200:
        raise Unauthorized("an X-Form-Key header is required")
    clinic_id = clinic_for_form_key(services.database, form_key)
    request.state.form_clinic = clinic_id
    return clinic_id


Staff = Annotated[Principal, Depends(staff)]

ADMIN_ROLE = "admin"


OPERATOR_ROLE = "operator"


async def admin(principal: Staff) -> Principal:
    """Staff holding their clinic's admin role (provider accounts)."""
    if ADMIN_ROLE not in principal.roles:
        raise Forbidden("this route needs the admin role")
    return principal


async def operator(principal: Staff) -> Principal:
    """The platform's operators: queues and dead letters are shared by every clinic, so a
    clinic's admin role is not enough to see or replay them."""
    if OPERATOR_ROLE not in principal.roles:
        raise Forbidden("this route needs the operator role (a clinic admin is not an operator)")
    return principal


Admin = Annotated[Principal, Depends(admin)]
Operator = Annotated[Principal, Depends(operator)]
FormClinic = Annotated[UUID, Depends(form_clinic)]

_GUARDS: frozenset[Callable[..., Any]] = frozenset({staff, admin, operator, form_clinic})


def _guards_of(dependant: Dependant) -> frozenset[Callable[..., Any]]:
    """The guards among a route's dependencies, however deeply they are nested."""
    found = {dependant.call} & _GUARDS if dependant.call is not None else set()
    for sub in dependant.dependencies:
        found |= _guards_of(sub)
    return frozenset(found)


async def check_caller(request: Request, guards: frozenset[Callable[..., Any]]) -> None:
    """Run `guards` for this request (the form key's query off the event loop); their
    answers stay on the request for the route's dependencies."""
    services = await container_services()
    if form_clinic in guards:
        form_key = await form_key_header(request)
        await run_in_threadpool(form_clinic, request, form_key, services)
    if guards & {staff, admin, operator}:
        credentials = await bearer(request)
        principal = await staff(request, credentials, services)
        if admin in guards:
            await admin(principal)
        if operator in guards:
            await operator(principal)


class GuardedRoute(APIRoute):
    """A route that checks its caller (401/403) before FastAPI reads the request's body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        guards = _guards_of(self.dependant)
        if not guards:
            return handle

        async def guarded(request: Request) -> Response:
            await check_caller(request, guards)
            return await handle(request)

        return guarded
