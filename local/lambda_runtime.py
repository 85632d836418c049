"""An execution environment as the Lambda service runs one, on loopback.

Each environment is a process running AWS's runtime interface client
(`python -m awslambdaric handler.handler`) against a Runtime API and an Extensions API
served here (one HTTP/1.1 server per environment, as `AWS_LAMBDA_RUNTIME_API` names one
host:port per environment in AWS). The lifecycle is Lambda's:

- init: the process starts and imports its handler; internal extensions register; init is
  over when the runtime and every extension have asked for their next event;
- invoke: the event goes to the runtime's pending `next`, INVOKE to every extension's; the
  runtime posts the response (or an error), which goes to the caller at once; the invoke
  phase lasts until the runtime and every extension ask for their next event again, so an
  extension's work after the response happens inside it;
- between invocations the process is frozen (SIGSTOP) and thawed (SIGCONT) for the next
  one: a thread that works after its handler returned stalls here exactly as in AWS;
- a response, or the end of the invoke phase, later than the function's timeout kills the
  environment (the next invocation starts a new one, a cold start).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

log = logging.getLogger("local")

RUNTIME = "/2018-06-01/runtime"
EXTENSION = "/2020-01-01/extension"
ACCOUNT_ID = "123456789012"


class FunctionError(Exception):
    """The function answered with an error (the runtime's /error), or did not answer."""

    def __init__(self, payload: dict[str, Any]) -> None:
        super().__init__(payload.get("errorMessage", "function error"))
        self.payload = payload


@dataclass
class _Extension:
    identifier: str
    name: str
    events: tuple[str, ...]
    waiting: bool = False
    seen: int = 0  # invocations delivered


@dataclass
class _Invocation:
    number: int
    request_id: str
    body: bytes
    deadline: float  # time.time() seconds
    trace_id: str
    result: tuple[str, bytes] | None = None  # ("response" | "error", payload)
    done: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class Report:
    request_id: str
    duration_ms: float  # until the response
    invoke_phase_ms: float  # until the runtime and every extension asked for the next event
    init_ms: float | None  # this invocation's cold start, if it had one
    restore_ms: float | None = None


class Environment:
    """One execution environment: a process and the APIs it talks to."""

    def __init__(
        self,
        *,
        name: str,
        handler: str,
        code_dir: Path,
        python_path: list[Path],
        environment: Mapping[str, str],
        timeout_seconds: int,
        memory_mb: int,
        on_output: Callable[[str], None] | None = None,
        snap_start: bool = False,
    ) -> None:
        self.name = name
        self.timeout_seconds = timeout_seconds
        self._cond = threading.Condition()
        self._extensions: dict[str, _Extension] = {}
        self._runtime_waiting = False
        self._runtime_seen = 0  # invocations delivered to the runtime
        self._invocation: _Invocation | None = None
        self._count = 0
        self._init_error: dict[str, Any] | None = None
        self._restore_waiting = False
        self._restored = threading.Event()
        self._after_restore_done = False
        self.init_ms: float | None = None
        self.frozen = False
        self.dead = False
        self._server = _serve(self)
        host, port = str(self._server.server_address[0]), int(self._server.server_address[1])
        env = {
            **environment,
            "AWS_LAMBDA_RUNTIME_API": f"{host}:{port}",
            "AWS_LAMBDA_FUNCTION_NAME": name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory_mb),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": "local",
            "LAMBDA_TASK_ROOT": str(code_dir),
            "_HANDLER": handler,
            "PYTHONPATH": os.pathsep.join(str(p) for p in python_path),
            "PYTHONUNBUFFERED": "1",
        }
        if snap_start:
            env["AWS_LAMBDA_INITIALIZATION_TYPE"] = "snap-start"
        self._started = time.perf_counter()
        self.process = _spawner.popen(
            [sys.executable, "-m", "awslambdaric", handler],
            cwd=code_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        self._reader = threading.Thread(
            target=self._read_output, args=(on_output,), name=f"{name}-output", daemon=True
        )
        self._reader.start()

    # ------------------------------------------------------------ lifecycle

    def wait_initialised(self) -> float:
        """Block until init is over; its duration in ms. FunctionError if init failed."""
        deadline = time.monotonic() + max(10.0, self.timeout_seconds)
        with self._cond:
            while not (self._ready() or self._restore_waiting):
                if self._init_error is not None or self.process.poll() is not None:
                    self.kill()
                    raise FunctionError(self._init_error or {"errorMessage": "init failed"})
                self._cond.wait(timeout=min(0.2, max(0.0, deadline - time.monotonic())))
                if time.monotonic() > deadline:
                    self.kill()
                    raise FunctionError({"errorMessage": "init timed out"})
            self.init_ms = (time.perf_counter() - self._started) * 1000
        self.freeze()
        return self.init_ms

    def _ready(self) -> bool:
        """The runtime and every extension wait for their next event."""
        return self._runtime_waiting and all(e.waiting for e in self._extensions.values())

    def restore(self) -> float:
        """A SnapStart restore: thaw an environment initialised with snap-start and let its
        runtime leave /restore/next (after-restore hooks run); the hooks' time in ms."""
        self.thaw()
        started = time.perf_counter()
        self._restored.set()
        with self._cond:
            while not self._ready():
                if self.process.poll() is not None:
                    raise FunctionError({"errorMessage": "restore failed"})
                self._cond.wait(timeout=0.2)
        return (time.perf_counter() - started) * 1000

    def invoke(self, event: Any) -> tuple[Any, Callable[[], Report]]:
        """Run one invocation: its response (FunctionError for an error) and a function that
        waits for the end of the invoke phase (then freezes the environment) and reports."""
        self.thaw()
        body = json.dumps(event).encode()
        started = time.perf_counter()
        with self._cond:
            self._count += 1
            invocation = _Invocation(
                number=self._count,
                request_id=str(uuid.uuid4()),
                body=body,
                deadline=time.time() + self.timeout_seconds,
                trace_id=f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Sampled=0",
            )
            self._invocation = invocation
            self._cond.notify_all()
        if not invocation.done.wait(timeout=self.timeout_seconds):
            self.kill()
            raise FunctionError({"errorMessage": f"Task timed out after {self.timeout_seconds} s"})
        duration_ms = (time.perf_counter() - started) * 1000
        init_ms, self.init_ms = self.init_ms, None
        assert invocation.result is not None
        kind, payload = invocation.result

        def finish() -> Report:
            self._wait_invoke_phase(invocation)
            total = (time.perf_counter() - started) * 1000
            return Report(invocation.request_id, duration_ms, total, init_ms)

        if kind == "error":
            finish()
            raise FunctionError(json.loads(payload or b"{}"))
        return (json.loads(payload) if payload else None), finish

    def _wait_invoke_phase(self, invocation: _Invocation) -> None:
        with self._cond:
            while not (
                self._runtime_seen >= invocation.number
                and self._ready()
                and all(e.seen >= invocation.number for e in self._extensions.values())
            ):
                if self.process.poll() is not None:
                    self.dead = True
                    return
                remaining = invocation.deadline - time.time()
                if remaining <= 0:
                    log.warning(
                        "%s: an extension outlived the timeout; environment ended", self.name
                    )
                    self.kill()
                    return
                self._cond.wait(timeout=min(0.5, remaining))
        self.freeze()

    def freeze(self) -> None:
        if not self.frozen and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGSTOP)
            self.frozen = True

    def thaw(self) -> None:
        if self.frozen and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
        self.frozen = False

    def kill(self) -> None:
        self.dead = True
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self._reader.join(timeout=5)  # the output ends with the process
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._server.shutdown()
        self._server.server_close()
        with self._cond:
            self._cond.notify_all()

    def shutdown(self) -> None:
        """End the environment (SIGTERM to a thawed process, as Lambda's shutdown does)."""
        self.dead = True
        if self.process.poll() is None:
            self.thaw()
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.kill()

    def _read_output(self, on_output: Callable[[str], None] | None) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            if on_output is not None:
                on_output(raw.decode("utf-8", "replace").rstrip("\n"))
        code = self.process.wait()
        if not self.dead:
            log.warning("%s: the environment's process exited (code %s)", self.name, code)
            with self._cond:
                self.dead = True
                self._cond.notify_all()

    # ------------------------------------------------------------ the APIs (server threads)

    def next_invocation(self) -> _Invocation:
        with self._cond:
            self._runtime_waiting = True
            self._cond.notify_all()
            while True:
                current = self._invocation
                if current is not None and current.number > self._runtime_seen:
                    self._runtime_seen = current.number
                    self._runtime_waiting = False
                    return current
                if self.dead:
                    raise ConnectionAbortedError("environment ended")
                self._cond.wait(timeout=1.0)

    def answer(self, request_id: str, kind: str, payload: bytes) -> bool:
        with self._cond:
            current = self._invocation
            if current is None or current.request_id != request_id or current.result:
                return False
            current.result = (kind, payload)
            current.done.set()
            return True

    def init_error(self, payload: bytes) -> None:
        with self._cond:
            try:
                self._init_error = json.loads(payload or b"{}")
            except ValueError:
                self._init_error = {"errorMessage": "init error"}
            self._cond.notify_all()

    def wait_restore(self) -> None:
        with self._cond:
            self._restore_waiting = True
            self._cond.notify_all()
        self._restored.wait()

    def register(self, name: str, events: list[str]) -> _Extension | None:
        with self._cond:
            if self._runtime_seen or self._runtime_waiting:
                return None  # extensions register during init only
            extension = _Extension(str(uuid.uuid4()), name, tuple(events))
            self._extensions[extension.identifier] = extension
            return extension

    def next_event(self, identifier: str) -> dict[str, Any]:
        with self._cond:
            extension = self._extensions[identifier]
            extension.waiting = True
            self._cond.notify_all()
            while True:
                current = self._invocation
                if current is not None and current.number > extension.seen:
                    extension.seen = current.number
                    extension.waiting = False
                    return {
                        "eventType": "INVOKE",
                        "deadlineMs": int(current.deadline * 1000),
                        "requestId": current.request_id,
                        "invokedFunctionArn": self.arn,
                        "tracing": {"type": "X-Amzn-Trace-Id", "value": current.trace_id},
                    }
                if self.dead:
                    raise ConnectionAbortedError("environment ended")
                self._cond.wait(timeout=1.0)

    @property
    def arn(self) -> str:
        return f"arn:aws:lambda:us-east-1:{ACCOUNT_ID}:function:{self.name}"


class _Spawner:
    """Starts the environments' processes from one thread that lives as long as the local
    runtime: the kernel sends the parent-death signal when the *thread* that forked the
    child ends, so a process started from a short-lived thread (a request's worker thread)
    would be killed with it."""

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue[tuple[Any, Any, Future[Any]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def popen(self, args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="spawner", daemon=True)
                self._thread.start()
        future: Future[subprocess.Popen[bytes]] = Future()
        self._requests.put((args, kwargs, future))
        return future.result()

    def _run(self) -> None:
        while True:
            args, kwargs, future = self._requests.get()
            try:
                future.set_result(subprocess.Popen(args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)


_spawner = _Spawner()


def _die_with_parent() -> None:
    """In the child: SIGKILL when the local runtime dies, even by SIGKILL (Linux)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A process that ends drops its connections: not an error of the server's."""
        error = sys.exc_info()[1]
        if not isinstance(error, ConnectionError):
            super().handle_error(request, client_address)


def _serve(environment: Environment) -> ThreadingHTTPServer:
    class Handler(_ApiHandler):
        env = environment

    server = _Server(("127.0.0.1", 0), Handler)
    threading.Thread(
        target=server.serve_forever, name=f"{environment.name}-api", daemon=True
    ).start()
    return server


class _ApiHandler(BaseHTTPRequestHandler):
    """The Runtime API and the Extensions API of one environment (HTTP/1.1, keep-alive)."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY the body waits
    # for the client's delayed ACK (about 40 ms per answer).
    disable_nagle_algorithm = True
    env: Environment

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the runtime's own log lines say enough

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        try:
            if self.path == f"{RUNTIME}/invocation/next":
                invocation = self.env.next_invocation()
                self._send(
                    200,
                    invocation.body,
                    {
                        "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
                        "Lambda-Runtime-Deadline-Ms": str(int(invocation.deadline * 1000)),
                        "Lambda-Runtime-Invoked-Function-Arn": self.env.arn,
                        "Lambda-Runtime-Trace-Id": invocation.trace_id,
                    },
                )
            elif self.path == f"{RUNTIME}/restore/next":
                self.env.wait_restore()
                self._send(200, b"{}")
            elif self.path == f"{EXTENSION}/event/next":
                identifier = self.headers.get("Lambda-Extension-Identifier", "")
                if identifier not in self.env._extensions:
                    self._send(403, b'{"errorType": "Extension.Unknown"}')
                    return
                event = self.env.next_event(identifier)
                self._send(
                    200,
                    json.dumps(event).encode(),
                    {"Lambda-Extension-Event-Identifier": str(uuid.uuid4())},
                )
            else:
                self._send(404, b'{"errorType": "NotFound"}')
        except (ConnectionAbortedError, BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def do_POST(self) -> None:
        body = self._body()
        parts = self.path.split("/")
        if self.path.startswith(f"{RUNTIME}/invocation/") and parts[-1] in ("response", "error"):
            request_id = parts[-2]
            accepted = self.env.answer(request_id, parts[-1], body)
            self._send(202 if accepted else 400, b'{"status": "OK"}' if accepted else b"{}")
        elif self.path == f"{RUNTIME}/init/error" or self.path == f"{RUNTIME}/restore/error":
            self.env.init_error(body)
            self._send(202, b'{"status": "OK"}')
        elif self.path == f"{EXTENSION}/register":
            request = json.loads(body or b"{}")
            name = self.headers.get("Lambda-Extension-Name", "")
            events = [e for e in request.get("events", []) if e in ("INVOKE", "SHUTDOWN")]
            extension = self.env.register(name, events) if name else None
            if extension is None:
                self._send(403, b'{"errorType": "Extension.RegistrationOutsideInit"}')
                return
            self._send(
                200,
                json.dumps(
                    {"functionName": self.env.name, "functionVersion": "$LATEST", "handler": ""}
                ).encode(),
                {"Lambda-Extension-Identifier": extension.identifier},
            )
        elif self.path.startswith(EXTENSION):
            self._send(202, b'{"status": "OK"}')  # init/error, exit/error: noted, ignored
        else:
            self._send(404, b'{"errorType": "NotFound"}')
