"""The local runtime's token verification (LOCAL_JWT_SECRET, no API Gateway in front): as
strict as API Gateway's JWT authorizer."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from fastapi.testclient import TestClient

from tests.support import UNREACHABLE_ENVIRONMENT, reset_process_state

SECRET = "local-token-secret-of-at-least-32-bytes"
ISSUER, AUDIENCE = "https://auth.frontdesk.local/", "frontdesk-api"
CLINIC = uuid.uuid4()


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with pytest.MonkeyPatch.context() as env:
        for name, value in UNREACHABLE_ENVIRONMENT.items():
            env.setenv(name, value)
        env.setenv("LOCAL_JWT_SECRET", SECRET)
        reset_process_state()
        from frontdesk.services import get_services
        from frontdesk.web.app import make_app

        # The token's clinic exists (looked up before; tests here never reach the database).
        get_services().known_clinics.remember(CLINIC)
        yield TestClient(make_app(), raise_server_exceptions=False)
    reset_process_state()


def token(**claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "staff-1", "clinic_id": str(CLINIC)}
    payload |= {"iat": now, "exp": now + 300}
    payload |= claims
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, SECRET, "HS256")


def status_with(client: TestClient, bearer: str) -> int:
    # A route whose path parameter is refused (422) once the caller has been let in.
    answer = client.get("/jobs/not-a-uuid", headers={"Authorization": f"Bearer {bearer}"})
    return answer.status_code


def test_a_valid_token_is_let_in(client: TestClient) -> None:
    assert status_with(client, token()) == 422


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": None},  # no expiry: API Gateway refuses it
        {"exp": int(time.time()) - 60},
        {"exp": "9999999999"},  # a string is not a NumericDate
        {"iat": int(time.time()) + 3600},  # issued in the future
        {"iat": "0"},
        {"iat": True},
        {"nbf": int(time.time()) + 3600},  # not valid yet
        {"nbf": "0"},
        {"iss": None},
        {"aud": None},
        {"aud": "someone-else"},
    ],
    ids=[
        "no exp",
        "expired",
        "exp a string",
        "iat in the future",
        "iat a string",
        "iat a boolean",
        "nbf in the future",
        "nbf a string",
        "no iss",
        "no aud",
        "another aud",
    ],
)
def test_a_token_api_gateway_would_refuse_is_401(
    client: TestClient, claims: dict[str, Any]
) -> None:
    assert status_with(client, token(**claims)) == 401


def test_a_token_signed_with_another_key_is_401(client: TestClient) -> None:
    forged = jwt.encode(jwt.decode(token(), options={"verify_signature": False}), "x" * 40, "HS256")
    assert status_with(client, forged) == 401
