"""The container's services: built once per Lambda container (or local process), reused by
every invocation.

Settings, AWS clients, the database, envelope encryption and the blind index, the outbox
publisher and hand-off, the mailer, the SMS sender, the model client and the clinics known
to exist. Each is built on
first use, so a function pays at cold start only for what it touches; anything a test or
the local runtime wants to replace is given to the constructor
(`Services(settings, database=..., mailer=...)`). Routes get the container's object
through `Depends(get_services)`, workers through `get_services()`, and `use_services`
installs another one in one call. No other module keeps a service of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

from frontdesk.config import Settings

if TYPE_CHECKING:
    from pydantic import SecretStr

    from frontdesk.assistant.llm import ChatModel
    from frontdesk.clinics import KnownClinics
    from frontdesk.notifications.channels import Mailer, SmsSender
    from frontdesk.platform.aws import Aws
    from frontdesk.platform.crypto import BlindIndex, EnvelopeCipher
    from frontdesk.platform.db import Database
    from frontdesk.platform.handoff import Relay
    from frontdesk.platform.idempotency import IdempotencyRequest
    from frontdesk.platform.outbox import Publisher
    from frontdesk.platform.unit_of_work import UnitOfWork
    from frontdesk.tokens import TokenVerifier

T = TypeVar("T")
SERVICE_NAMES = frozenset(
    {
        "aws",
        "database",
        "reader",
        "cipher",
        "blind_index",
        "publisher",
        "relay_publisher",
        "handoff",
        "mailer",
        "sms",
        "chat_model",
        "tokens",
        "websocket_management",
        "known_clinics",
    }
)


class Services:
    def __init__(self, settings: Settings | None = None, **given: Any) -> None:
        unknown = set(given) - SERVICE_NAMES
        if unknown:
            raise TypeError(f"unknown services: {', '.join(sorted(unknown))}")
        self.settings = settings if settings is not None else Settings()
        self._built: dict[str, Any] = dict(given)
        self._lock = threading.RLock()

    def _once(self, name: str, build: Callable[[], T]) -> T:
        built: T | None = self._built.get(name)
        if built is None:
            with self._lock:
                built = self._built.get(name)
                if built is None:
                    built = self._built[name] = build()
        return built

    @property
    def aws(self) -> Aws:
        def build() -> Aws:
            from frontdesk.platform.aws import Aws

            return Aws(self.settings)

        return self._once("aws", build)

    def conninfo(self, url: SecretStr | None = None, host: str = "") -> str:
        """A connection string: `url` if given, else the database secret at the endpoint
        `host` (the writer's, DATABASE_HOST, when empty)."""
        settings = self.settings
        if url is not None:
            return url.get_secret_value()
        if settings.database_url is not None and not host:
            return settings.database_url.get_secret_value()
        from frontdesk.platform.db import conninfo_from_secret

        return conninfo_from_secret(
            self.aws.secret(settings.database_secret_arn),
            host=host or settings.database_host,
            port=settings.database_port,
            dbname=settings.database_name,
        )

    def _connection(self, url: SecretStr | None, host: str) -> Database:
        """One lazily opened connection: to `url`, else the secret at the endpoint `host`."""
        from frontdesk.platform.db import SingleConnectionDatabase

        options = self.settings.connect_options()
        return SingleConnectionDatabase(lambda: self.conninfo(url, host), options=options)

    @property
    def database(self) -> Database:
        """The writer: every write, and every read that must see the caller's own writes."""
        settings = self.settings
        return self._once(
            "database", lambda: self._connection(settings.database_url, settings.database_host)
        )

    @property
    def reader(self) -> Database:
        """The read replica when one is configured, else the writer. Only reads that may lag
        behind a commit by the replica's delay (lists, the dashboard) come here; a route that
        must show what its caller just wrote reads `database`."""
        settings = self.settings
        configured = settings.database_reader_url is not None or settings.database_reader_host
        if not configured and "reader" not in self._built:
            return self.database
        return self._once(
            "reader",
            lambda: self._connection(settings.database_reader_url, settings.database_reader_host),
        )

    @property
    def cipher(self) -> EnvelopeCipher:
        def build() -> EnvelopeCipher:
            from frontdesk.platform.crypto import EnvelopeCipher, KmsKeyService

            keys = KmsKeyService(self.aws, self.settings.kms_key_id)
            return EnvelopeCipher(keys, self.settings.data_key_max_age_seconds)

        return self._once("cipher", build)

    @property
    def blind_index(self) -> BlindIndex:
        def build() -> BlindIndex:
            from frontdesk.platform.crypto import BlindIndex

            settings = self.settings
            if settings.blind_index_key is not None:
                key = settings.blind_index_key.get_secret_value()
            else:
                key = self.aws.secret(settings.blind_index_secret_arn)
            return BlindIndex(key.encode())

        return self._once("blind_index", build)

    @property
    def publisher(self) -> Publisher:
        def build() -> Publisher:
            from frontdesk.platform.outbox import Publisher

            settings = self.settings
            return Publisher(self.aws, settings.queue_urls(), settings.event_bus_name)

        return self._once("publisher", build)

    @property
    def relay_publisher(self) -> Publisher:
        """The publisher of the after-response relay: its budget's short timeouts and one
        attempt per call (the sweeper's `publisher` may take its time)."""

        def build() -> Publisher:
            from frontdesk.platform.aws import Aws
            from frontdesk.platform.outbox import Publisher

            settings = self.settings
            budget_aws = Aws(
                settings,
                connect_timeout=settings.relay_connect_timeout_seconds,
                read_timeout=settings.relay_read_timeout_seconds,
                max_attempts=1,
            )
            return Publisher(budget_aws, settings.queue_urls(), settings.event_bus_name)

        return self._once("relay_publisher", build)

    @property
    def handoff(self) -> Relay:
        """The relay of committed outbox rows, after the response, within its budget."""

        def build() -> Relay:
            from frontdesk.platform.handoff import Relay

            budget = self.settings.relay_budget_seconds
            return Relay(self.database, self.relay_publisher, budget)

        return self._once("handoff", build)

    @property
    def mailer(self) -> Mailer:
        def build() -> Mailer:
            from frontdesk.notifications.channels import SesMailer

            return SesMailer(self.aws)

        return self._once("mailer", build)

    @property
    def sms(self) -> SmsSender:
        def build() -> SmsSender:
            from frontdesk.notifications.channels import SnsSms

            return SnsSms(self.aws)

        return self._once("sms", build)

    @property
    def chat_model(self) -> ChatModel:
        def build() -> ChatModel:
            from frontdesk.assistant.llm import model_from_settings

            return model_from_settings(self.settings, self.aws)

        return self._once("chat_model", build)

    @property
    def websocket_management(self) -> Any:
        """The WebSocket API's @connections client: one attempt per post, with the push
        timeout, so a slow browser's post fails alone (and is retried with its event)."""

        def build() -> Any:
            from frontdesk.platform.aws import Aws

            timeout = self.settings.push_post_timeout_seconds
            aws = Aws(self.settings, connect_timeout=timeout, read_timeout=timeout, max_attempts=1)
            return aws.client(
                "apigatewaymanagementapi", endpoint_url=self.settings.websocket_management_url
            )

        return self._once("websocket_management", build)

    @property
    def tokens(self) -> TokenVerifier:
        def build() -> TokenVerifier:
            from frontdesk.tokens import TokenVerifier

            return TokenVerifier(self.settings)

        return self._once("tokens", build)

    @property
    def known_clinics(self) -> KnownClinics:
        """The clinics staff tokens name that this container has found to exist."""

        def build() -> KnownClinics:
            from frontdesk.clinics import KnownClinics

            return KnownClinics(self.database)

        return self._once("known_clinics", build)

    def unit_of_work(
        self,
        *,
        request_id: str | None = None,
        clinic_id: UUID | None = None,
        idempotency: IdempotencyRequest | None = None,
    ) -> UnitOfWork:
        from frontdesk.platform.unit_of_work import UnitOfWork

        return UnitOfWork(
            self.database,
            self.handoff,
            request_id=request_id,
            clinic_id=clinic_id,
            idempotency=idempotency,
        )

    def close(self) -> None:
        """Close what holds connections (the model client, the database)."""
        with self._lock:
            built, self._built = self._built, {}
        for name in ("chat_model", "reader", "database"):
            service = built.get(name)
            if service is not None:
                service.close()


_lock = threading.Lock()
_services: Services | None = None


def get_services() -> Services:
    """The container's services, built on first use."""
    global _services
    if _services is None:
        with _lock:
            if _services is None:
                _services = Services()
    return _services


def use_services(services: Services | None) -> None:
    """Install `services` for this process (None: build anew on next use) and close the
    one it replaces."""
    global _services
    with _lock:
        previous, _services = _services, services
    if previous is not None and previous is not services:
        previous.close()
