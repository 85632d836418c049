"""Load and invoke the template's functions in this process, logging like `sam local`.

Each function's handler module is imported once and kept, as a warm Lambda container
keeps it; one invocation runs at a time per function, as in a container.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
import uuid
from collections.abc import Callable
from types import ModuleType
from typing import Any

from local.template import FunctionSpec

log = logging.getLogger("local")


class LambdaContext:
    """The attributes of Lambda's context object that handlers and Powertools read."""

    def __init__(self, function_name: str, timeout_seconds: int, memory_mb: int) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = (
            f"arn:aws:lambda:us-east-1:123456789012:function:{function_name}"
        )
        self.memory_limit_in_mb = memory_mb
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "local"
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def load_handler_module(spec: FunctionSpec) -> ModuleType:
    module_name, _ = spec.handler.rsplit(".", 1)
    path = spec.code_uri / f"{module_name}.py"
    module_spec = importlib.util.spec_from_file_location(f"fn_{spec.logical_id}", path)
    if module_spec is None or module_spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


class LocalFunction:
    """One function's warm container."""

    def __init__(self, spec: FunctionSpec, on_invoked: Callable[[str, Any], None] | None = None):
        self.spec = spec
        self._handler: Callable[[Any, Any], Any] | None = None
        self._lock = threading.Lock()
        self._on_invoked = on_invoked

    def _load(self) -> Callable[[Any, Any], Any]:
        if self._handler is None:
            started = time.perf_counter()
            module = load_handler_module(self.spec)
            self._handler = getattr(module, self.spec.handler.rsplit(".", 1)[1])
            log.info(
                "%s INIT Duration: %.1f ms",
                self.spec.logical_id,
                (time.perf_counter() - started) * 1000,
            )
        return self._handler

    def invoke(self, event: Any) -> Any:
        with self._lock:
            handler = self._load()
            context = LambdaContext(self.spec.logical_id, self.spec.timeout, self.spec.memory)
            records = len(event.get("Records", [])) if isinstance(event, dict) else 0
            started = time.perf_counter()
            outcome = "ok"
            try:
                response: Any = handler(event, context)
            except Exception as exc:
                outcome = f"error {type(exc).__name__}"
                raise
            finally:
                duration = (time.perf_counter() - started) * 1000
                failures = ""
                if outcome == "ok" and records:
                    failed = len((response or {}).get("batchItemFailures", []))
                    failures = f" Records: {records} Failures: {failed}"
                log.info(
                    "%s REPORT RequestId: %s Duration: %.1f ms%s%s",
                    self.spec.logical_id,
                    context.aws_request_id,
                    duration,
                    failures,
                    "" if outcome == "ok" else f" ({outcome})",
                )
            if self._on_invoked is not None:
                self._on_invoked(self.spec.logical_id, response)
            return response
