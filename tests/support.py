"""Helpers for tests: events from files, handler loading, process state reset."""

from __future__ import annotations

import base64
import copy
import importlib.util
import json
import uuid
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
EVENTS = Path(__file__).resolve().parent / "events"


@cache
def _event_file(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return data


def load_event(name: str) -> dict[str, Any]:
    return copy.deepcopy(_event_file(name))


def http_event(
    method: str,
    path: str,
    *,
    body: Any = None,
    clinic_id: uuid.UUID | str | None = None,
    headers: dict[str, str] | None = None,
    query: str = "",
) -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) event; `clinic_id` None means no authorizer."""
    event = load_event("http_api_request.json")
    event["routeKey"] = f"{method} {path}"
    event["rawPath"] = path
    event["rawQueryString"] = query
    event["requestContext"]["http"].update(method=method, path=path)
    event["requestContext"]["requestId"] = f"req-{uuid.uuid4().hex[:16]}"
    if clinic_id is None:
        del event["requestContext"]["authorizer"]
    else:
        event["requestContext"]["authorizer"]["jwt"]["claims"]["clinic_id"] = str(clinic_id)
    if body is None:
        event["body"] = None
        del event["headers"]["content-type"]
    else:
        event["body"] = body if isinstance(body, str) else json.dumps(body)
    event["headers"].update({k.lower(): v for k, v in (headers or {}).items()})
    return event


def sqs_event(bodies: list[str], *, receive_count: int = 1, request_id: str | None = None) -> dict:
    base = load_event("sqs_batch.json")["Records"][0]
    records = []
    for body in bodies:
        record = copy.deepcopy(base)
        record["messageId"] = str(uuid.uuid4())
        record["body"] = body
        record["attributes"]["ApproximateReceiveCount"] = str(receive_count)
        if request_id:
            record["messageAttributes"] = {
                "requestId": {
                    "stringValue": request_id,
                    "dataType": "String",
                    "stringListValues": [],
                    "binaryListValues": [],
                }
            }
        records.append(record)
    return {"Records": records}


def http_response(response: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    """(status, headers, parsed JSON body) of a Lambda proxy response."""
    body = response.get("body") or ""
    if response.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    return response["statusCode"], response["headers"], json.loads(body) if body else None


class LambdaContext:
    function_name = "test"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:test"
    memory_limit_in_mb = 512
    aws_request_id = "00000000-0000-0000-0000-000000000001"
    log_group_name = "/aws/lambda/test"
    log_stream_name = "test"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def load_handler(function_dir: str) -> ModuleType:
    """Import functions/<dir>/handler.py under a unique module name."""
    path = REPO / "functions" / function_dir / "handler.py"
    spec = importlib.util.spec_from_file_location(f"handler_{function_dir}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reset_process_state() -> None:
    """Forget the container's services, as a new Lambda container would."""
    from frontdesk.services import use_services

    use_services(None)


def use_test_services(**given: Any) -> Any:
    """A new container's services with some of them replaced (settings read from the
    environment now); returns the Services installed."""
    from frontdesk.config import Settings
    from frontdesk.services import Services, use_services

    services = Services(Settings(), **given)
    use_services(services)
    return services


def unreachable_publisher(queue_urls: dict[str, str]) -> Any:
    """An outbox publisher whose SQS and EventBridge endpoint nothing listens on."""
    from frontdesk.config import Settings
    from frontdesk.platform.aws import Aws
    from frontdesk.platform.outbox import Publisher

    dead = Aws(Settings(aws_endpoint_url="http://127.0.0.1:9"))
    return Publisher(dead, queue_urls, "unused")


# What every function needs to start, for tests that never reach AWS or the database
# (a request that would is refused before it).
UNREACHABLE_ENVIRONMENT = {
    "DATABASE_URL": "postgresql://unit-tests.invalid:1/none",
    "KMS_KEY_ID": "alias/unit-tests",
    "BLIND_INDEX_KEY": "unit-tests-blind-index-key-of-32-bytes",
    "NOTIFICATIONS_QUEUE_URL": "http://sqs.invalid/notifications",
    "LLM_QUEUE_URL": "http://sqs.invalid/llm",
    "SYNC_QUEUE_URL": "http://sqs.invalid/sync",
    "NOTIFICATIONS_DLQ_URL": "http://sqs.invalid/notifications-dlq",
    "LLM_DLQ_URL": "http://sqs.invalid/llm-dlq",
    "SYNC_DLQ_URL": "http://sqs.invalid/sync-dlq",
}
