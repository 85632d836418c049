"""Who is calling: staff (JWT claims) or a public web form (a clinic's form key).

In AWS the HTTP API's JWT authorizer has verified the token before the function runs and
passes its claims in the event; the function trusts those and nothing else. The local
runtime has no API Gateway, so there (and only when LOCAL_JWT_SECRET is set) the token is
verified here with HS256.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any
from uuid import UUID

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from frontdesk.clinics import clinic_for_form_key
from frontdesk.config import Settings
from frontdesk.errors import Forbidden, Unauthorized
from frontdesk.web.context import ServicesDep

bearer = HTTPBearer(auto_error=False, description="A staff JWT naming the clinic")
form_key_header = APIKeyHeader(
    name="X-Form-Key", auto_error=False, description="The clinic's public web form key"
)


@dataclass(frozen=True)
class Principal:
    clinic_id: UUID
    subject: str
    roles: frozenset[str]


def _claims(
    request: Request, credentials: HTTPAuthorizationCredentials | None, settings: Settings
) -> dict[str, Any]:
    event = request.scope.get("aws.event")
    if isinstance(event, dict):
        claims = event.get("requestContext", {}).get("authorizer", {}).get("jwt", {}).get("claims")
        if not isinstance(claims, dict):
            raise Unauthorized("a staff token is required")
        return claims
    if settings.local_jwt_secret is None or credentials is None:
        raise Unauthorized("a staff token is required")
    import jwt  # the local runtime only

    try:
        decoded: dict[str, Any] = jwt.decode(
            credentials.credentials,
            settings.local_jwt_secret.get_secret_value(),
            algorithms=["HS256"],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
        )
    except jwt.PyJWTError as exc:
        raise Unauthorized(f"the staff token is not valid ({type(exc).__name__})") from None
    return decoded


def _roles(value: Any) -> frozenset[str]:
    # API Gateway flattens array claims to "[a b]"; a locally decoded token keeps the list.
    if isinstance(value, list):
        return frozenset(str(v) for v in value)
    if isinstance(value, str):
        return frozenset(value.strip("[]").replace(",", " ").split())
    return frozenset()


async def staff(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    services: ServicesDep,
) -> Principal:
    settings = services.settings
    claims = _claims(request, credentials, settings)
    try:
        clinic_id = UUID(str(claims.get(settings.tenant_claim, "")))
    except ValueError:
        raise Forbidden("the token names no clinic") from None
    return Principal(
        clinic_id=clinic_id,
        subject=str(claims.get("sub", "")),
        roles=_roles(claims.get(settings.roles_claim)),
    )


def form_clinic(
    form_key: Annotated[str | None, Depends(form_key_header)],
    services: ServicesDep,
) -> UUID:
    # `def`: the lookup is a query (FastAPI runs it in a worker thread).
    if not form_key or len(form_key) > 200:
        raise Unauthorized("an X-Form-Key header is required")
    return clinic_for_form_key(services.database, form_key)


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
