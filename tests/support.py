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
    """Forget every per-container cache, as a new Lambda container would."""
    from frontdesk import config
    from frontdesk.assistant import llm
    from frontdesk.platform import aws, crypto, db
    from frontdesk.web.routes import appointments as routes_appointments
    from frontdesk.web.routes import assistant as routes_assistant
    from frontdesk.web.routes import leads as routes_leads
    from frontdesk.workers import llm as assistant_worker
    from frontdesk.workers import notify as workers

    config.get_settings.cache_clear()
    aws.client.cache_clear()
    aws._session.cache_clear()
    aws._secrets_provider.cache_clear()
    crypto.reset()
    routes_leads.lead_ports.cache_clear()
    routes_appointments.ports.cache_clear()
    routes_assistant.publisher.cache_clear()
    assistant_worker.reset_model()
    llm._bedrock_client.cache_clear()
    workers._mailer.cache_clear()
    _reset_sync_caches()
    database = db._database
    if database is not None:
        database.close()
    db.set_database(None)


def _reset_sync_caches() -> None:
    from frontdesk.web.routes import sync as routes_sync
    from frontdesk.workers import sync as sync_worker

    sync_worker.ports.cache_clear()
    routes_sync.publisher.cache_clear()
