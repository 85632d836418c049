"""WebSocketAuthorizer: the `$connect` route's REQUEST authorizer.

A browser cannot set headers on a WebSocket handshake, so the staff token comes in the
query string (`?token=...`; the API's identity source, so a handshake without one is
refused with 401 before this runs). The token is verified as the HTTP API's JWT authorizer
verifies it (frontdesk.tokens): with the issuer's published keys in AWS, with the local
secret locally. A valid token is allowed to connect, and the clinic and staff member it
names go to WebSocketFunction as the authorizer's context; any other is denied (403).

It needs no database, so it runs outside the VPC, where it reaches the issuer's keys; the
clinic itself is checked at `$connect` (frontdesk.push.socket).
"""

from __future__ import annotations

from typing import Any

from frontdesk.entry import lambda_handler
from frontdesk.errors import FrontdeskError
from frontdesk.observability import logger
from frontdesk.services import get_services
from frontdesk.tokens import principal_of

NEEDS = ("jwt_issuer", "jwt_audience")


def _policy(effect: str, resource: str, principal: str) -> dict[str, Any]:
    return {
        "principalId": principal,
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Action": "execute-api:Invoke", "Effect": effect, "Resource": resource}],
        },
    }


def authorize(event: dict[str, Any], context: Any) -> dict[str, Any]:
    services = get_services()
    resource = str(event.get("methodArn", ""))
    token = (event.get("queryStringParameters") or {}).get("token") or ""
    try:
        principal = principal_of(services.tokens.verify(token), services.settings)
    except FrontdeskError as exc:
        logger.info("connection refused", extra={"reason": exc.detail})
        return _policy("Deny", resource, "anonymous")
    allowed = _policy("Allow", resource, principal.subject or "staff")
    # The context's values must be strings, numbers or booleans.
    allowed["context"] = {
        "clinicId": str(principal.clinic_id),
        "subject": principal.subject,
        "roles": " ".join(sorted(principal.roles)),
    }
    return allowed


def make_handler() -> Any:
    return lambda_handler("WebSocketAuthorizer", NEEDS, authorize, emits_metrics=False)
