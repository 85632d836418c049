"""SnapStart: ApiFunction's init does the first request's work, and the runtime hooks keep
nothing unique or time-bound in the snapshot (run in the order Lambda runs them)."""

from __future__ import annotations

from typing import Any

import pytest
from awslambdaric import lambda_runtime_hooks_runner
from snapshot_restore_py import get_after_restore

from tests.integration.conftest import FORM_KEY, App
from tests.support import (
    LambdaContext,
    http_event,
    http_response,
    load_handler,
    reset_process_state,
)

PERSON = {"name": "Ada Lovelace", "email": "ada@example.com", "consent": True}


def post_lead(api: Any) -> int:
    event = http_event("POST", "/public/leads", body=PERSON, headers={"x-form-key": FORM_KEY})
    status, _, _ = http_response(api.handler(event, LambdaContext()))
    return status


def test_the_snapshot_holds_no_connection_key_or_secret_and_a_restore_serves_at_once(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    from frontdesk.services import get_services

    # Given ApiFunction initialised for a snapshot (Lambda sets the initialization type)
    monkeypatch.setenv("AWS_LAMBDA_INITIALIZATION_TYPE", "snap-start")
    reset_process_state()  # a new container: its settings read at init
    api = load_handler("api")
    services = get_services()
    # Then init created the request path's clients (the first request will not)
    assert {"kms", "secretsmanager", "sqs", "events"} <= set(services.aws._clients)
    # And a request (as a warm-up would) leaves a connection, a data key and a secret
    assert post_lead(api) == 201
    database: Any = services.database
    key_before = services.cipher.data_key()
    connects = database.connects
    assert database._conn is not None and services.aws._secrets
    # When Lambda runs the hooks around the snapshot, in its order
    lambda_runtime_hooks_runner.run_before_snapshot()
    # Then the snapshot would hold none of them
    assert database._conn is None
    assert services.cipher._current is None and not services.aws._secrets
    lambda_runtime_hooks_runner.run_after_restore()
    get_after_restore().clear()  # the registry is the process's; leave it as it was
    # And the restored copy serves at once, with its own connection and data key
    assert post_lead(api) == 201
    assert database.connects == connects + 1
    assert services.cipher.data_key().encrypted != key_before.encrypted
