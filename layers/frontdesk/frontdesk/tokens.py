"""Staff tokens (JWTs naming a clinic and the staff member's roles), read the same way by
every entry point.

In AWS the HTTP API's JWT authorizer verifies a token before ApiFunction runs and passes its
claims on; the WebSocket API's `$connect` has no JWT authorizer, so its REQUEST authorizer
function verifies the token itself, with the issuer's published keys (JWKS, RS256: Cognito
or any OpenID issuer). The local runtime signs its tokens with its own secret
(LOCAL_JWT_SECRET, HS256). Either way as strictly as API Gateway: issuer, audience and an
`exp` in the future required; `iat` and `nbf`, when present, numbers not in the future.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from frontdesk.config import Settings
from frontdesk.errors import Forbidden, Unauthorized

# Clock skew tolerated in exp, iat and nbf (as the local gateway's authorizer).
TOKEN_LEEWAY_SECONDS = 5
_TIME_CLAIMS = ("exp", "iat", "nbf")


@dataclass(frozen=True)
class Principal:
    clinic_id: UUID
    subject: str
    roles: frozenset[str]


class TokenVerifier:
    """Verifies staff tokens; one per container (the issuer's keys are cached)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._jwks: Any = None
        self._lock = threading.Lock()

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims; Unauthorized (with the reason's type, never the token)."""
        import jwt

        settings = self._settings
        try:
            if settings.local_jwt_secret is not None:
                key: Any = settings.local_jwt_secret.get_secret_value()
                algorithms = ["HS256"]
            else:
                key = self._signing_key(token)
                algorithms = ["RS256"]
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=settings.jwt_audience,
                issuer=settings.jwt_issuer,
                leeway=TOKEN_LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"the staff token is not valid ({type(exc).__name__})") from None
        for name in _TIME_CLAIMS:
            # RFC 7519 NumericDate: a JSON number (PyJWT would also take "123" or true).
            value = claims.get(name)
            if name in claims and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise Unauthorized(f"the staff token is not valid ({name} is not a number)")
        return claims

    def _signing_key(self, token: str) -> Any:
        import jwt

        with self._lock:
            if self._jwks is None:
                issuer = self._settings.jwt_issuer.rstrip("/")
                self._jwks = jwt.PyJWKClient(f"{issuer}/.well-known/jwks.json", timeout=3)
        return self._jwks.get_signing_key_from_jwt(token).key


def roles_of(value: Any) -> frozenset[str]:
    # API Gateway flattens array claims to "[a b]"; a decoded token keeps the list.
    if isinstance(value, list):
        return frozenset(str(v) for v in value)
    if isinstance(value, str):
        return frozenset(value.strip("[]").replace(",", " ").split())
    return frozenset()


def principal_of(claims: dict[str, Any], settings: Settings) -> Principal:
    """Who the claims name: Forbidden when they name no clinic."""
    try:
        clinic_id = UUID(str(claims.get(settings.tenant_claim, "")))
    except ValueError:
        raise Forbidden("the token names no clinic") from None
    return Principal(
        clinic_id=clinic_id,
        subject=str(claims.get("sub", "")),
        roles=roles_of(claims.get(settings.roles_claim)),
    )
