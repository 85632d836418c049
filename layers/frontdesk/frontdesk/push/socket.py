"""WebSocketFunction: the WebSocket API's routes.

- `$connect`: the authorizer has verified the staff token (its context carries the clinic
  and the staff member); the connection is recorded, or refused (403) when the clinic is
  not ours.
- `subscribe`: `{"action": "subscribe", "topics": [...]}` adds topics; the answer lists
  every topic the connection now follows: `{"type": "subscribed", "topics": [...]}`.
- `$default`: any other message: `{"type": "error", "status": 400, "message": ...}`.
- `$disconnect`: the connection is forgotten.

Answers to messages go back on the connection (the routes' responses); a refusal is
`{"type": "error", "status", "message"}` with a message that never repeats the input.
"""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

from pydantic import ValidationError

from frontdesk.entry import lambda_handler
from frontdesk.errors import Forbidden, FrontdeskError
from frontdesk.observability import logger
from frontdesk.platform.queues import validation_reasons
from frontdesk.push import connections
from frontdesk.push.connections import Subscribe
from frontdesk.services import get_services

NEEDS = ("database",)
_USAGE = 'send {"action": "subscribe", "topics": ["leads", "appointments", "jobs", ...]}'


def _answer(status: int, body: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"statusCode": status}
    if body is not None:
        answer["body"] = json.dumps(body, separators=(",", ":"))
    return answer


def _error(status: int, message: str) -> dict[str, Any]:
    return _answer(status, {"type": "error", "status": status, "message": message})


def route(event: dict[str, Any], context: Any) -> dict[str, Any]:
    request = event.get("requestContext") or {}
    connection_id = str(request.get("connectionId", ""))
    route_key = request.get("routeKey")
    db = get_services().database
    try:
        if route_key == "$connect":
            authorizer = request.get("authorizer") or {}
            try:
                clinic_id = UUID(str(authorizer.get("clinicId", "")))
            except ValueError:
                raise Forbidden("the token names no clinic") from None
            connections.connect(
                db,
                connection_id=connection_id,
                clinic_id=clinic_id,
                subject=str(authorizer.get("subject", "")),
            )
            logger.info("connected", extra={"connection_id": connection_id})
            return _answer(200)
        if route_key == "$disconnect":
            connections.disconnect(db, connection_ids=[connection_id])
            return _answer(200)
        if route_key == "subscribe":
            try:
                wanted = Subscribe.model_validate_json(event.get("body") or "")
            except ValidationError as exc:
                return _error(400, f"{validation_reasons(exc)}; {_USAGE}")
            topics = connections.subscribe(db, connection_id=connection_id, topics=wanted.topics)
            return _answer(200, {"type": "subscribed", "topics": topics})
        return _error(400, f"unknown action; {_USAGE}")
    except FrontdeskError as exc:
        return _error(exc.status, exc.detail)


def make_handler() -> Any:
    return lambda_handler(
        "WebSocketFunction",
        NEEDS,
        route,
        correlation_id_path="requestContext.requestId",
        emits_metrics=False,
    )
