"""API Gateway's WebSocket API on loopback, from the template's routes, authorizer and
integrations.

- `$connect`: the route's REQUEST authorizer runs first. Its identity source must be in the
  request (else 401, the authorizer not called); its Deny is a 403; its context reaches the
  integration as `requestContext.authorizer`. A `$connect` integration answering other than
  2xx refuses the handshake.
- A message is routed by `$request.body.action` (the route with that key, else `$default`);
  a body the integration answers with goes back on the connection.
- `$disconnect` when either side closes, or when API Gateway would: 10 minutes idle, 2 hours
  connected (both adjustable for tests).
- The `@connections` management API at `{management_url}/@connections/{id}`: POST sends,
  GET describes, DELETE closes; 410 Gone for a connection that is not there. The PushWorker
  reaches it with boto3's `apigatewaymanagementapi` client, as in AWS.

Events have API Gateway's shape: `requestContext.connectionId`, `routeKey`, `eventType`
(CONNECT, MESSAGE, DISCONNECT), `connectedAt`, `stage`, and so on.
"""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from local.functions import FunctionError
from local.template import Provisioned

log = logging.getLogger("local")

ACCOUNT_ID = "123456789012"
_FUNCTION_ARN = re.compile(r"\$\{(\w+)\.Arn\}")
Invoke = Callable[[str, dict[str, Any]], Any]  # (function logical id, event) -> response


@dataclass(frozen=True)
class WsRoute:
    key: str
    function: str
    authorizer_function: str | None = None
    identity_source: tuple[str, ...] = ()


@dataclass(frozen=True)
class WsApiSpec:
    logical_id: str
    stage: str
    selection: str  # e.g. "$request.body.action"
    routes: dict[str, WsRoute]


def websocket_apis(stack: Provisioned) -> list[WsApiSpec]:
    """The template's WebSocket APIs with their routes' functions and authorizers."""
    resources = stack.template["Resources"]

    def function_of(value: Any) -> str:
        text = json.dumps(value)
        found = _FUNCTION_ARN.search(text) or re.search(r'"Fn::GetAtt": \["(\w+)", "Arn"\]', text)
        if found is None:
            raise ValueError(f"no function in {text}")
        return found.group(1)

    def ref(value: Any) -> str | None:
        if isinstance(value, dict) and "Ref" in value:
            return str(value["Ref"])
        text = json.dumps(value)
        found = re.search(r"\$\{(\w+)\}", text)
        return found.group(1) if found else None

    apis = []
    for api_id, api in resources.items():
        props = api.get("Properties") or {}
        if api["Type"] != "AWS::ApiGatewayV2::Api" or props.get("ProtocolType") != "WEBSOCKET":
            continue
        stage = next(
            (
                str(r["Properties"]["StageName"])
                for r in resources.values()
                if r["Type"] == "AWS::ApiGatewayV2::Stage"
                and ref(r["Properties"].get("ApiId")) == api_id
            ),
            "$default",
        )
        routes: dict[str, WsRoute] = {}
        for route in resources.values():
            route_props = route.get("Properties") or {}
            if (
                route["Type"] != "AWS::ApiGatewayV2::Route"
                or ref(route_props.get("ApiId")) != api_id
            ):
                continue
            integration = resources[str(ref(route_props["Target"]))]["Properties"]
            authorizer_id = ref(route_props.get("AuthorizerId"))
            authorizer = resources[authorizer_id]["Properties"] if authorizer_id else None
            key = str(route_props["RouteKey"])
            routes[key] = WsRoute(
                key=key,
                function=function_of(integration["IntegrationUri"]),
                authorizer_function=function_of(authorizer["AuthorizerUri"])
                if authorizer
                else None,
                identity_source=tuple(authorizer.get("IdentitySource") or ()) if authorizer else (),
            )
        apis.append(
            WsApiSpec(
                api_id,
                stage,
                str(props.get("RouteSelectionExpression", "$request.body.action")),
                routes,
            )
        )
    return apis


@dataclass
class _Connection:
    id: str
    socket: Any  # websockets ServerConnection
    connected_at: float
    source_ip: str
    authorizer: dict[str, Any] = field(default_factory=dict)
    last_active: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.monotonic)


class LocalWebSocketApi:
    """One WebSocket API served on loopback, with its management endpoint."""

    def __init__(
        self,
        spec: WsApiSpec,
        invoke: Invoke,
        *,
        idle_timeout_seconds: float = 600,
        max_duration_seconds: float = 7200,
    ) -> None:
        self.spec = spec
        self._invoke = invoke
        self._idle = idle_timeout_seconds
        self._max = max_duration_seconds
        self._connections: dict[str, _Connection] = {}
        self._loop = asyncio.new_event_loop()
        self._server: Any = None
        self._management: ThreadingHTTPServer | None = None
        self._expiry: Any = None
        self.url = ""
        self.management_url = ""
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="websocket", daemon=True
        )

    # ------------------------------------------------------------ start, stop

    def start(self, port: int = 0) -> LocalWebSocketApi:
        from websockets.asyncio.server import serve

        self._thread.start()

        async def open_server() -> Any:
            return await serve(
                self._handle,
                "127.0.0.1",
                port,
                process_request=self._process_request,
                ping_interval=None,
            )

        self._server = asyncio.run_coroutine_threadsafe(open_server(), self._loop).result(15)
        host, bound = self._server.sockets[0].getsockname()[:2]
        self.url = f"ws://{host}:{bound}"
        self._management = _management_server(self)
        self.management_url = (
            f"http://127.0.0.1:{self._management.server_address[1]}/{self.spec.stage}"
        )
        self._expiry = asyncio.run_coroutine_threadsafe(self._expire(), self._loop)
        return self

    def stop(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        if self._management is not None:
            self._management.shutdown()
            self._management.server_close()
        if self._server is not None:

            async def close() -> None:
                self._server.close()
                await self._server.wait_closed()

            asyncio.run_coroutine_threadsafe(close(), self._loop).result(15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    # ------------------------------------------------------------ events

    def _context(self, connection_id: str, route_key: str, event_type: str) -> dict[str, Any]:
        now = datetime.now(UTC)
        connection = self._connections.get(connection_id)
        context: dict[str, Any] = {
            "routeKey": route_key,
            "eventType": event_type,
            "extendedRequestId": base64.b64encode(uuid.uuid4().bytes[:10]).decode(),
            "requestTime": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "messageDirection": "IN",
            "stage": self.spec.stage,
            "connectedAt": int((connection.connected_at if connection else time.time()) * 1000),
            "requestTimeEpoch": int(now.timestamp() * 1000),
            "identity": {"sourceIp": connection.source_ip if connection else "127.0.0.1"},
            "requestId": base64.b64encode(uuid.uuid4().bytes[:10]).decode(),
            "domainName": "127.0.0.1",
            "connectionId": connection_id,
            "apiId": "localws",
        }
        if connection is not None and connection.authorizer:
            context["authorizer"] = connection.authorizer
        return context

    async def _call(self, function: str, event: dict[str, Any]) -> Any:
        return await asyncio.to_thread(self._invoke, function, event)

    async def _process_request(self, connection: Any, request: Any) -> Any:
        """The handshake: authorizer, then the $connect integration."""
        route = self.spec.routes.get("$connect")
        connection_id = base64.b64encode(uuid.uuid4().bytes[:12]).decode()
        headers = {k.lower(): v for k, v in request.headers.raw_items()}
        query = dict(parse_qsl(urlsplit(request.path).query, keep_blank_values=True))
        source_ip = str((connection.remote_address or ("127.0.0.1",))[0])
        pending = _Connection(connection_id, None, time.time(), source_ip)
        self._connections[connection_id] = pending
        connection.connection_id = connection_id
        if route is None:
            return None
        try:
            if route.authorizer_function is not None:
                denied = await self._authorize(route, pending, headers, query)
                if denied is not None:
                    self._connections.pop(connection_id, None)
                    return connection.respond(
                        denied, "Unauthorized\n" if denied == 401 else "Forbidden\n"
                    )
            event = {
                "headers": headers,
                "multiValueHeaders": {k: [v] for k, v in headers.items()},
                "queryStringParameters": query or None,
                "multiValueQueryStringParameters": {k: [v] for k, v in query.items()} or None,
                "requestContext": self._context(connection_id, "$connect", "CONNECT"),
                "isBase64Encoded": False,
            }
            answer = await self._call(route.function, event)
        except FunctionError:
            self._connections.pop(connection_id, None)
            return connection.respond(500, "Internal Server Error\n")
        status = int(answer.get("statusCode", 200)) if isinstance(answer, dict) else 200
        if not 200 <= status < 300:
            self._connections.pop(connection_id, None)
            return connection.respond(status, "Forbidden\n")
        return None

    async def _authorize(
        self, route: WsRoute, pending: _Connection, headers: dict[str, str], query: dict[str, str]
    ) -> int | None:
        """None when allowed (the context kept), else the refusal's status."""
        for source in route.identity_source:
            name = source.rsplit(".", 1)[-1]
            present = query.get(name) if ".querystring." in source else headers.get(name.lower())
            if not present:
                return 401
        method_arn = (
            f"arn:aws:execute-api:us-east-1:{ACCOUNT_ID}:localws/{self.spec.stage}/$connect"
        )
        event = {
            "type": "REQUEST",
            "methodArn": method_arn,
            "headers": headers,
            "multiValueHeaders": {k: [v] for k, v in headers.items()},
            "queryStringParameters": query,
            "multiValueQueryStringParameters": {k: [v] for k, v in query.items()},
            "stageVariables": {},
            "requestContext": self._context(pending.id, "$connect", "CONNECT"),
        }
        assert route.authorizer_function is not None
        try:
            answer = await self._call(route.authorizer_function, event)
        except FunctionError:
            return 500
        statements = (answer or {}).get("policyDocument", {}).get("Statement", [])

        def covers(statement: dict[str, Any]) -> bool:
            resources = statement.get("Resource", [])
            resources = resources if isinstance(resources, list) else [resources]
            return any(fnmatch.fnmatchcase(method_arn, str(r)) for r in resources)

        effects = {s.get("Effect") for s in statements if covers(s)}
        if effects != {"Allow"}:  # no statement for this route, or one Deny: refused
            return 403
        context = {str(k): v for k, v in (answer.get("context") or {}).items()}
        pending.authorizer = {**context, "principalId": answer.get("principalId", "")}
        return None

    async def _handle(self, socket: Any) -> None:
        connection_id: str = socket.connection_id
        connection = self._connections[connection_id]
        connection.socket = socket
        code, reason = 1001, "Going away"
        try:
            async for message in socket:
                connection.last_active = time.monotonic()
                await self._message(connection_id, message)
        except Exception as exc:  # the client went away abruptly
            code, reason = 1006, type(exc).__name__
        else:
            if socket.close_code is not None:
                code, reason = socket.close_code, socket.close_reason or "Client closed"
        finally:
            await self._disconnect(connection_id, code, reason)

    async def _message(self, connection_id: str, message: str | bytes) -> None:
        text = message if isinstance(message, str) else message.decode("utf-8", "replace")
        key = "$default"
        try:
            body = json.loads(text)
            field_name = self.spec.selection.removeprefix("$request.body.")
            selected = body.get(field_name) if isinstance(body, dict) else None
            if isinstance(selected, str) and selected in self.spec.routes:
                key = selected
        except ValueError:
            pass
        route = self.spec.routes.get(key)
        if route is None:
            return
        context = self._context(connection_id, key, "MESSAGE")
        context["messageId"] = base64.b64encode(uuid.uuid4().bytes[:10]).decode()
        event = {"requestContext": context, "body": text, "isBase64Encoded": False}
        try:
            answer = await self._call(route.function, event)
        except FunctionError:
            await self._send(connection_id, json.dumps({"message": "Internal server error"}))
            return
        if isinstance(answer, dict) and answer.get("body"):
            await self._send(connection_id, str(answer["body"]))

    async def _disconnect(self, connection_id: str, code: int, reason: str) -> None:
        if connection_id not in self._connections:
            return
        route = self.spec.routes.get("$disconnect")
        if route is not None:
            context = self._context(connection_id, "$disconnect", "DISCONNECT")
            context.update(disconnectStatusCode=code, disconnectReason=reason)
            event = {"headers": {}, "requestContext": context, "isBase64Encoded": False}
            try:
                await self._call(route.function, event)
            except FunctionError as exc:
                log.warning("$disconnect failed: %s", exc)
        self._connections.pop(connection_id, None)

    async def _send(self, connection_id: str, data: str | bytes) -> bool:
        connection = self._connections.get(connection_id)
        if connection is None or connection.socket is None:
            return False
        try:
            await asyncio.wait_for(connection.socket.send(data), timeout=5)
        except Exception:
            return False
        return True

    async def _expire(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self._idle / 4))
            now = time.monotonic()
            for connection in list(self._connections.values()):
                if connection.socket is None:
                    continue
                if (
                    now - connection.last_active > self._idle
                    or now - connection.started > self._max
                ):
                    await connection.socket.close(1001, "Going away")

    # ------------------------------------------------------------ management (other threads)

    def post(self, connection_id: str, data: bytes) -> bool:
        future = asyncio.run_coroutine_threadsafe(
            self._send(connection_id, data.decode()), self._loop
        )
        return bool(future.result(timeout=10))

    def describe(self, connection_id: str) -> dict[str, Any] | None:
        connection = self._connections.get(connection_id)
        if connection is None or connection.socket is None:
            return None
        return {
            "ConnectedAt": datetime.fromtimestamp(connection.connected_at, UTC).isoformat(),
            "Identity": {"SourceIp": connection.source_ip},
            "LastActiveAt": datetime.now(UTC).isoformat(),
        }

    def close(self, connection_id: str) -> bool:
        connection = self._connections.get(connection_id)
        if connection is None or connection.socket is None:
            return False
        asyncio.run_coroutine_threadsafe(
            connection.socket.close(1000, "Closed by the server"), self._loop
        ).result(10)
        return True

    @property
    def connection_ids(self) -> list[str]:
        return [c.id for c in self._connections.values() if c.socket is not None]


def _management_server(api: LocalWebSocketApi) -> ThreadingHTTPServer:
    prefix = f"/{api.spec.stage}/@connections/"

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in separate writes: without TCP_NODELAY the body waits
        # for the client's delayed ACK (about 40 ms per answer).
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _connection_id(self) -> str | None:
            path = urlsplit(self.path).path
            return unquote(path[len(prefix) :]) if path.startswith(prefix) else None

        def _answer(self, status: int, body: Mapping[str, Any] | None = None) -> None:
            payload = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            if status == 410:
                self.send_header("x-amzn-ErrorType", "GoneException")
            self.end_headers()
            self.wfile.write(payload)

        def do_POST(self) -> None:
            data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            connection_id = self._connection_id()
            if connection_id is None:
                self._answer(404, {"message": "Not Found"})
            elif api.post(connection_id, data):
                self._answer(200)
            else:
                self._answer(410, {"message": "GoneException"})

        def do_GET(self) -> None:
            connection_id = self._connection_id()
            info = api.describe(connection_id) if connection_id else None
            self._answer(200, info) if info else self._answer(410, {"message": "GoneException"})

        def do_DELETE(self) -> None:
            connection_id = self._connection_id()
            if connection_id and api.close(connection_id):
                self._answer(204)
            else:
                self._answer(410, {"message": "GoneException"})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="ws-management", daemon=True).start()
    return server
