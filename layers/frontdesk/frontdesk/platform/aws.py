"""AWS clients, created once per container and reused by every invocation.

boto3 is imported on first use, not at module import, so a function pays for it only
when it really calls AWS.
"""

from __future__ import annotations

import threading
from functools import cache
from typing import Any

from frontdesk.config import get_settings
from frontdesk.errors import ServiceUnavailable

_lock = threading.Lock()


@cache
def _session() -> Any:
    """One boto3 session per container: its clients share loaded models and credentials."""
    import boto3

    return boto3.session.Session()


@cache
def client(service: str) -> Any:
    """A boto3 client for `service`, with short timeouts and bounded retries.

    Creating clients is not thread-safe in boto3; the local server has threads.
    """
    from botocore.config import Config

    settings = get_settings()
    config = Config(
        connect_timeout=settings.aws_connect_timeout_seconds,
        read_timeout=settings.aws_read_timeout_seconds,
        retries={"max_attempts": 2, "mode": "standard"},
    )
    with _lock:
        return _session().client(
            service,
            region_name=settings.aws_region,
            endpoint_url=settings.aws_endpoint_url,
            config=config,
        )


def get_secret(secret_id: str, max_age_seconds: int = 300) -> str:
    """A Secrets Manager secret's string, cached per container (Powertools parameters)."""
    from aws_lambda_powertools.utilities.parameters import SecretsProvider
    from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

    try:
        value = _secrets_provider(SecretsProvider).get(secret_id, max_age=max_age_seconds)
    except GetParameterError as exc:
        # The message names the secret, not its value.
        raise ServiceUnavailable("a secret could not be read; retry later") from exc
    return str(value)


@cache
def _secrets_provider(provider_class: Any) -> Any:
    return provider_class(boto3_client=client("secretsmanager"))
