"""AWS clients of one container: one boto3 session, one client per service, secrets cached.

boto3 is imported on first use, not at module import, so a function pays for it only when
it really calls AWS. Every client has short timeouts and bounded retries; AWS_ENDPOINT_URL
points them all at moto locally.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from frontdesk.config import Settings
from frontdesk.errors import ServiceUnavailable

SECRET_MAX_AGE_SECONDS = 300.0


class Aws:
    def __init__(
        self,
        settings: Settings,
        *,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        max_attempts: int = 2,
    ) -> None:
        """Clients with the settings' timeouts, or the given ones (the after-response relay's
        budget: short timeouts, one attempt)."""
        self._settings = settings
        self._connect_timeout = connect_timeout or settings.aws_connect_timeout_seconds
        self._read_timeout = read_timeout or settings.aws_read_timeout_seconds
        self._max_attempts = max_attempts
        self._session: Any = None
        self._clients: dict[str, Any] = {}
        self._secrets: dict[str, tuple[str, float]] = {}
        # Creating clients is not thread-safe in boto3; the local server has threads.
        self._lock = threading.Lock()

    def client(self, service: str, endpoint_url: str | None = None) -> Any:
        """The container's client for `service`, created on first use; `endpoint_url` for a
        service reached at an address of its own (an API's @connections endpoint)."""
        key = service if endpoint_url is None else f"{service} {endpoint_url}"
        client = self._clients.get(key)
        if client is not None:
            return client
        from botocore.config import Config

        settings = self._settings
        config = Config(
            connect_timeout=self._connect_timeout,
            read_timeout=self._read_timeout,
            retries={"max_attempts": self._max_attempts, "mode": "standard"},
        )
        with self._lock:
            if key not in self._clients:
                if self._session is None:
                    import boto3

                    # One session: its clients share loaded models and credentials.
                    self._session = boto3.session.Session()
                self._clients[key] = self._session.client(
                    service,
                    region_name=settings.aws_region,
                    endpoint_url=endpoint_url or settings.aws_endpoint_url,
                    config=config,
                )
            return self._clients[key]

    def secret(self, secret_id: str, max_age_seconds: float = SECRET_MAX_AGE_SECONDS) -> str:
        """A Secrets Manager secret's string, cached for `max_age_seconds`."""
        cached = self._secrets.get(secret_id)
        now = time.monotonic()
        if cached is not None and now - cached[1] < max_age_seconds:
            return cached[0]
        if not secret_id:
            raise ServiceUnavailable("a secret is not configured; see the function's settings")
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = self.client("secretsmanager").get_secret_value(SecretId=secret_id)
        except (BotoCoreError, ClientError) as exc:
            # The message names the secret, not its value; keep both out of the answer.
            raise ServiceUnavailable(
                f"a secret could not be read ({type(exc).__name__}); retry later"
            ) from exc
        value = str(answer["SecretString"])
        self._secrets[secret_id] = (value, now)
        return value

    def forget_secrets(self) -> None:
        """Read secrets again on next use (after a SnapStart restore, or a rotation)."""
        self._secrets.clear()
