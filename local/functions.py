"""The template's functions, each a pool of execution environments, logging like `sam local`.

A function keeps up to its concurrency of environments (local.lambda_runtime): an
invocation takes an idle one, or starts one (a cold start, with an INIT line) while the
pool is below its concurrency, or else waits for one to finish its invoke phase (an
event source mapping or an asynchronous invoke: Lambda holds the event) or, for a
synchronous caller such as API Gateway (`throttle=True`), is refused at once with
Lambda's TooManyRequestsException, as a function at its reserved concurrency is. Each
invocation logs a REPORT line once its invoke phase is over (the runtime and every
extension done), as Lambda's REPORT covers the extensions' time too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from local.lambda_runtime import Environment, FunctionError, Report
from local.template import FunctionSpec

log = logging.getLogger("local")

__all__ = ["FunctionError", "LocalFunction", "Throttled"]


class Throttled(FunctionError):
    """Lambda refused the invocation: the function is at its reserved concurrency."""

    def __init__(self, function: str) -> None:
        super().__init__(
            {
                "errorType": "TooManyRequestsException",
                "errorMessage": "Rate Exceeded.",
                "Reason": "ReservedFunctionConcurrentInvocationLimitExceeded",
                "function": function,
            }
        )


class LocalFunction:
    def __init__(
        self,
        spec: FunctionSpec,
        environment: Mapping[str, str],
        *,
        concurrency: int = 1,
        on_invoked: Callable[[str, Any], None] | None = None,
        snap_start: bool = False,
        throttle: bool = False,
    ) -> None:
        self.spec = spec
        self.concurrency = max(1, concurrency)
        self.throttle = throttle
        self.throttles = 0  # invocations refused (Lambda's Throttles metric)
        self._environment = dict(environment)
        self._on_invoked = on_invoked
        self._snap_start = snap_start
        self._idle: list[Environment] = []
        self._count = 0  # live environments, idle or busy
        self._cond = threading.Condition()
        self._stopped = False

    def _output(self, line: str) -> None:
        if line.strip():
            log.info("%s %s", self.spec.logical_id, line)

    def start_environment(self) -> Environment:
        """A new environment, initialised (a cold start)."""
        environment = Environment(
            name=self.spec.logical_id,
            handler=self.spec.handler,
            code_dir=self.spec.code_uri,
            python_path=list(self.spec.layers),
            environment=self._environment,
            timeout_seconds=self.spec.timeout,
            memory_mb=self.spec.memory,
            on_output=self._output,
            snap_start=self._snap_start,
        )
        init_ms = environment.wait_initialised()
        log.info("%s INIT Duration: %.1f ms", self.spec.logical_id, init_ms)
        return environment

    def _acquire(self) -> Environment:
        with self._cond:
            while True:
                if self._stopped:
                    raise FunctionError({"errorMessage": "the local runtime is stopping"})
                if self._idle:
                    return self._idle.pop()
                if self._count < self.concurrency:
                    self._count += 1
                    break
                if self.throttle:
                    self.throttles += 1
                    log.info(
                        "%s THROTTLED (concurrency %d)", self.spec.logical_id, self.concurrency
                    )
                    raise Throttled(self.spec.logical_id)
                self._cond.wait()
        try:
            return self.start_environment()
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise

    def _release(self, environment: Environment) -> None:
        with self._cond:
            if environment.dead or self._stopped:
                self._count -= 1
                if not environment.dead:
                    environment.shutdown()
            else:
                self._idle.append(environment)
            self._cond.notify()

    def invoke(self, event: Any) -> Any:
        """One invocation's response (FunctionError when the function failed). Returns as
        soon as the response is there; the environment is busy until its invoke phase ends."""
        environment = self._acquire()
        records = len(event.get("Records", [])) if isinstance(event, dict) else 0
        try:
            response, finish = environment.invoke(event)
        except FunctionError as exc:
            log.info("%s REPORT error %s", self.spec.logical_id, exc.payload.get("errorType", ""))
            self._release(environment)
            raise
        failures = None
        if records and isinstance(response, dict):
            failures = len(response.get("batchItemFailures") or [])

        def complete() -> None:
            try:
                self._report(finish(), records, failures)
            finally:
                self._release(environment)
            if self._on_invoked is not None:
                self._on_invoked(self.spec.logical_id, response)

        threading.Thread(target=complete, name=f"{self.spec.logical_id}-phase", daemon=True).start()
        return response

    def _report(self, report: Report, records: int, failures: int | None) -> None:
        extra = f" Records: {records} Failures: {failures}" if failures is not None else ""
        init = f" Init Duration: {report.init_ms:.1f} ms" if report.init_ms is not None else ""
        log.info(
            "%s REPORT RequestId: %s Duration: %.1f ms Invoke phase: %.1f ms%s%s",
            self.spec.logical_id,
            report.request_id,
            report.duration_ms,
            report.invoke_phase_ms,
            init,
            extra,
        )

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            idle, self._idle = self._idle, []
            self._cond.notify_all()
        for environment in idle:
            environment.shutdown()
