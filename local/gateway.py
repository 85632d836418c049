"""API Gateway's HTTP API on loopback, from the template's routes and JWT authorizers.

A request is matched to a route (`METHOD /path/{param}`, most specific first), its JWT is
verified when the route has an authorizer (issuer, audience, signature, `exp` required,
`nbf`/`iat` not in the future), and the function is invoked with a payload format 2.0
event whose `requestContext.authorizer.jwt.claims` carries the claims as API Gateway passes
them (strings; arrays as "[a b]"). The function's proxy response becomes the HTTP answer.
Refusals are API Gateway's own: 404 `{"message":"Not Found"}`, 401
`{"message":"Unauthorized"}`, 413 over 10 MB, 500 `{"message":"Internal Server Error"}`
when the function fails, and also when Lambda throttles it (a function at its reserved
concurrency: API Gateway cannot tell a client to retry then, which is why the API's
reserved concurrency sits above its share of the database, where it answers 503 itself).
Locally the tokens are HS256 under the runtime's own secret.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import anyio

from local.functions import FunctionError
from local.template import HttpRoute, JwtAuthorizer

MAX_BODY_BYTES = 10 * 1024 * 1024
LEEWAY_SECONDS = 5  # clock skew the authorizer tolerates
_PARAM = re.compile(r"\{([^{}+]+)(\+?)\}")


class _Route:
    def __init__(self, route: HttpRoute, invoke: Callable[[dict[str, Any]], Any]) -> None:
        self.route = route
        self.invoke = invoke
        self.key = f"{route.method} {route.path}"
        pattern = ""
        position = 0
        for match in _PARAM.finditer(route.path):
            pattern += re.escape(route.path[position : match.start()])
            greedy = match.group(2) == "+"
            pattern += f"(?P<{match.group(1)}>{'.+' if greedy else '[^/]+'})"
            position = match.end()
        pattern += re.escape(route.path[position:])
        self.regex = re.compile(f"^{pattern}$")
        self.params = len(_PARAM.findall(route.path))

    def match(self, method: str, path: str) -> dict[str, str] | None:
        if self.route.method not in ("ANY", method):
            return None
        found = self.regex.match(path)
        return None if found is None else found.groupdict()


class HttpApiGateway:
    """An ASGI app standing in for the HTTP API in front of its functions: `invoke` is the
    one function behind every route, or a map of each route to its function."""

    def __init__(
        self,
        routes: Sequence[HttpRoute],
        authorizers: Mapping[str, JwtAuthorizer],
        jwt_secret: str,
        invoke: Callable[[dict[str, Any]], Any]
        | Mapping[HttpRoute, Callable[[dict[str, Any]], Any]],
        extra_documents: Mapping[str, bytes] | None = None,
    ) -> None:
        def target(route: HttpRoute) -> Callable[[dict[str, Any]], Any]:
            return invoke[route] if isinstance(invoke, Mapping) else invoke

        # Literal segments win over parameters, as API Gateway picks the most specific route.
        self._routes = sorted((_Route(r, target(r)) for r in routes), key=lambda r: r.params)
        self._authorizers = dict(authorizers)
        self._secret = jwt_secret
        self._documents = dict(extra_documents or {})

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > MAX_BODY_BYTES:
                await _answer(send, 413, {"message": "Request Entity Too Large"})
                return
            if not message.get("more_body"):
                break
        if method == "GET" and path in self._documents:
            await _raw(send, 200, self._documents[path], "application/json")
            return
        matched = None
        for route in self._routes:
            params = route.match(method, path)
            if params is not None:
                matched = (route, params)
                break
        if matched is None:
            await _answer(send, 404, {"message": "Not Found"})
            return
        route, params = matched
        headers = _headers(scope)
        claims = None
        if route.route.authorizer is not None:
            claims = self._verify(route.route.authorizer, headers.get("authorization", ""))
            if claims is None:
                await _answer(send, 401, {"message": "Unauthorized"})
                return
        event = _event(scope, route.key, headers, params, body, claims)
        try:
            response = await anyio.to_thread.run_sync(route.invoke, event)
        except FunctionError:
            await _answer(send, 500, {"message": "Internal Server Error"})
            return
        await _proxy(send, response)

    def _verify(self, authorizer_name: str, authorization: str) -> dict[str, Any] | None:
        import jwt

        authorizer = self._authorizers.get(authorizer_name)
        scheme, _, token = authorization.partition(" ")
        if authorizer is None or scheme.lower() != "bearer" or not token:
            return None
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                audience=list(authorizer.audiences),
                issuer=authorizer.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError:
            return None
        if "iat" in claims and float(claims["iat"]) > time.time() + LEEWAY_SECONDS:
            return None
        return claims


def _headers(scope: Mapping[str, Any]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", []):
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    return headers


def _claim(value: Any) -> str:
    if isinstance(value, list):
        return "[" + " ".join(str(v) for v in value) + "]"
    return str(value)


def _event(
    scope: Mapping[str, Any],
    route_key: str,
    headers: dict[str, str],
    params: dict[str, str],
    body: bytes,
    claims: dict[str, Any] | None,
) -> dict[str, Any]:
    """A payload format 2.0 event, as the HTTP API sends it to a Lambda integration."""
    now = datetime.now(UTC)
    query = scope.get("query_string", b"").decode("latin-1")
    cookies = [c.strip() for c in headers.pop("cookie", "").split(";") if c.strip()]
    try:
        text, encoded = body.decode("utf-8"), False
    except UnicodeDecodeError:
        text, encoded = base64.b64encode(body).decode(), True
    client = scope.get("client") or ("127.0.0.1", 0)
    context: dict[str, Any] = {
        "accountId": "123456789012",
        "apiId": "local",
        "domainName": headers.get("host", "127.0.0.1"),
        "domainPrefix": "local",
        "http": {
            "method": scope["method"],
            "path": scope["path"],
            "protocol": f"HTTP/{scope.get('http_version', '1.1')}",
            "sourceIp": client[0],
            "userAgent": headers.get("user-agent", ""),
        },
        "requestId": base64.b64encode(uuid.uuid4().bytes[:10]).decode().rstrip("="),
        "routeKey": route_key,
        "stage": "$default",
        "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
        "timeEpoch": int(now.timestamp() * 1000),
    }
    if claims is not None:
        context["authorizer"] = {
            "jwt": {"claims": {k: _claim(v) for k, v in claims.items()}, "scopes": None}
        }
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": scope["path"],
        "rawQueryString": query,
        "headers": headers,
        "requestContext": context,
        "isBase64Encoded": encoded,
    }
    if cookies:
        event["cookies"] = cookies
    if query:
        from urllib.parse import parse_qsl

        pairs: dict[str, str] = {}
        for name, value in parse_qsl(query, keep_blank_values=True):
            pairs[name] = f"{pairs[name]},{value}" if name in pairs else value
        event["queryStringParameters"] = pairs
    if params:
        event["pathParameters"] = params
    if body:
        event["body"] = text
    return event


async def _proxy(send: Any, response: Any) -> None:
    if not isinstance(response, dict) or "statusCode" not in response:
        await _answer(send, 200, response)  # a bare value: the HTTP API's JSON default
        return
    body = response.get("body") or ""
    raw = base64.b64decode(body) if response.get("isBase64Encoded") else str(body).encode()
    headers = [
        (name.lower().encode(), str(value).encode())
        for name, value in (response.get("headers") or {}).items()
        if name.lower() != "content-length"
    ]
    headers += [(b"set-cookie", c.encode()) for c in response.get("cookies") or []]
    headers.append((b"content-length", str(len(raw)).encode()))
    status = int(response["statusCode"])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": raw})


async def _answer(send: Any, status: int, body: Any) -> None:
    await _raw(send, status, json.dumps(body).encode(), "application/json")


async def _raw(send: Any, status: int, body: bytes, content_type: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
