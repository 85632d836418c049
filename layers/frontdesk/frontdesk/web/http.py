"""HTTP plumbing shared by every route: request context, the envelope, problem+json.

Domain exceptions become problem+json here and nowhere else.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from frontdesk.errors import (
    FrontdeskError,
    PayloadTooLarge,
    Problem,
    ServiceUnavailable,
    TooManyRequests,
)
from frontdesk.observability import logger

PROBLEM_BASE = "https://frontdesk.dev/problems/"
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class Meta(BaseModel):
    requestId: str
    timestamp: str
    operation: str
    entity: str
    success: bool
    affectedIds: list[str]
    executionTimeMs: float


class Envelope[T](BaseModel):
    data: T
    meta: Meta


class ProblemDetails(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    instance: str
    requestId: str
    errors: list[dict[str, Any]] | None = Field(default=None)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ProblemDetails, "content": {"application/problem+json": {}}}
    for status in (401, 403, 404, 413, 415, 422, 503)
}


def request_id_of(scope: Scope) -> str:
    """API Gateway's request id in Lambda; a caller's X-Request-Id locally; else a new one."""
    event = scope.get("aws.event")
    if isinstance(event, dict):
        rid = event.get("requestContext", {}).get("requestId")
        if rid:
            return str(rid)
    name: bytes
    value: bytes
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _SAFE_REQUEST_ID.match(candidate):
                return candidate
    return str(uuid.uuid4())


@dataclass(frozen=True)
class BodyRule:
    """A route whose body is not the default JSON: its own media types and size limit
    (a provider webhook verified over its raw bytes, a CSV upload)."""

    method: str
    path: re.Pattern[str]
    media_types: frozenset[bytes]
    max_bytes: int

    def accepts(self, media_type: bytes) -> bool:
        return media_type in self.media_types


def _media_type(scope: Scope) -> bytes:
    headers = dict(scope["headers"])
    media_type: bytes = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    return media_type


class RequestContextMiddleware:
    """Request id and timing for every request, the X-Request-Id header on every answer (a
    500 included); body size and media type for writes.

    Pure ASGI (no BaseHTTPMiddleware) so it adds microseconds, not a task per request.
    `body_rules` give single routes other media types and size limits than the JSON default.
    """

    def __init__(
        self, app: ASGIApp, max_body_bytes: int, body_rules: tuple[BodyRule, ...] = ()
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_rules = body_rules

    def _rule(self, scope: Scope) -> BodyRule | None:
        for rule in self.body_rules:
            if scope["method"] == rule.method and rule.path.fullmatch(scope["path"]):
                return rule
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["started"] = time.perf_counter()
        logger.set_correlation_id(request_id)

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        rule = self._rule(scope)
        max_body_bytes = rule.max_bytes if rule is not None else self.max_body_bytes
        problem = self._refuse_body(scope, max_body_bytes)
        if problem is not None:
            response = problem_response(scope["path"], request_id, problem)
            await response(scope, receive, send_with_id)
            return

        received = 0
        if rule is not None:
            media_ok = rule.accepts(_media_type(scope))
            media_hint = b", ".join(sorted(rule.media_types)).decode()
        else:
            media_ok, media_hint = self._is_json(scope), "application/json"

        async def limited_receive() -> Message:
            # An HTTPException raised here passes FastAPI's body parsing unchanged.
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                chunk = len(message.get("body", b""))
                if chunk and not media_ok and scope["method"] in _BODY_METHODS:
                    raise HTTPException(415, f"send the body as {media_hint}")
                received += chunk
                if received > max_body_bytes:
                    raise HTTPException(413, f"the body is over {max_body_bytes} bytes")
            return message

        try:
            await self.app(scope, limited_receive, send_with_id)
        except Exception as exc:
            # A bug. Answered here rather than by an exception handler: Starlette gives
            # those to its outermost middleware, outside this one, whose answer would lack
            # the X-Request-Id header that every answer carries.
            if started:
                raise
            logger.exception("unhandled error", extra={"error": type(exc).__name__})
            error = FrontdeskError("an unexpected error occurred; quote the requestId to support")
            await problem_response(scope["path"], request_id, error)(scope, receive, send_with_id)

    def _refuse_body(self, scope: Scope, max_body_bytes: int) -> FrontdeskError | None:
        """Refuse a declared oversized body before reading it."""
        if scope["method"] not in _BODY_METHODS:
            return None
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                return PayloadTooLarge("the Content-Length header is not a number")
            if size > max_body_bytes:
                return PayloadTooLarge(f"the body is over {max_body_bytes} bytes")
        return None

    @staticmethod
    def _is_json(scope: Scope) -> bool:
        headers: dict[bytes, bytes] = dict(scope["headers"])
        media_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        return media_type == b"application/json" or media_type.endswith(b"+json")


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def problem_response(
    instance: str,
    request_id: str,
    error: FrontdeskError,
    errors: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + _slug(error.title),
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        "instance": instance,
        "requestId": request_id,
    }
    if errors is not None:
        body["errors"] = errors
    body.update(error.problem_fields())
    headers = {}
    if isinstance(error, ServiceUnavailable | TooManyRequests):
        headers["Retry-After"] = str(error.retry_after_seconds)
    return JSONResponse(
        body, status_code=error.status, media_type="application/problem+json", headers=headers
    )


def _request_id(request: Request) -> str:
    return getattr(request.state, "request_id", None) or request_id_of(request.scope)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(FrontdeskError)
    async def domain_error(request: Request, exc: FrontdeskError) -> JSONResponse:
        if exc.status >= 500:
            logger.warning("request failed", extra={"status": exc.status, "error": exc.detail})
        return problem_response(request.url.path, _request_id(request), exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Field locations and messages only: the rejected values may be PII.
        errors = [
            {
                "loc": [str(part) for part in err.get("loc", ())],
                "msg": err.get("msg", ""),
                "type": err.get("type", ""),
            }
            for err in exc.errors()
        ]
        error = Problem(422, "Invalid input", "the request does not match the schema")
        return problem_response(request.url.path, _request_id(request), error, errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = Problem(exc.status_code, _http_title(exc.status_code), str(exc.detail))
        response = problem_response(request.url.path, _request_id(request), error)
        if exc.headers:
            response.headers.update(exc.headers)
        return response


def _http_title(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
