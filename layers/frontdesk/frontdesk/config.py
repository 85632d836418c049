"""Settings: one pydantic model, read from the environment and validated at cold start.

Domain code receives a `Settings` (or the values it needs); only this module reads
`os.environ`. The container's settings live on its `Services`; each function names the
settings it needs (`Settings.require`), checked when its handler module is imported.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from frontdesk.platform.db import ConnectOptions

_HOST_OR_NETWORK = re.compile(r"^[A-Za-z0-9.:\-]+(/[0-9]{1,3})?$")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    frontdesk_env: Literal["local", "dev", "prod", "test"] = "local"

    # Database: a URL locally, a Secrets Manager secret in AWS (a URL, RDS-style JSON, or the
    # {username, password} RDS keeps when it manages the master password). The endpoint (RDS
    # Proxy's, from template.yaml) wins over a host in the secret.
    database_url: SecretStr | None = None
    database_secret_arn: str = ""
    database_host: str = ""
    database_port: int = Field(default=0, ge=0, le=65535)  # 0: the secret's, else 5432
    database_name: str = ""
    # The read replica: list and dashboard reads go there when one is set (a URL locally, the
    # proxy's read-only endpoint in AWS, with the same secret); else to the writer.
    database_reader_url: SecretStr | None = None
    database_reader_host: str = ""
    db_connect_timeout_seconds: int = Field(default=5, ge=1, le=60)
    db_statement_timeout_ms: int = Field(default=5000, ge=100, le=900_000)
    db_pool_max_size: int = Field(default=10, ge=1, le=100)
    # TLS: verify-full in AWS, against the CA bundle in the layer unless another is named.
    db_sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = (
        "prefer"
    )
    db_sslrootcert: str = ""
    # Session settings sent at connect time; false behind RDS Proxy, which refuses them
    # (the database's own defaults carry the timeouts there).
    db_startup_options: bool = True

    # AWS: endpoint_url points every client at moto locally; unset in AWS.
    aws_endpoint_url: str | None = None
    aws_region: str = Field(default="us-east-1", validation_alias="AWS_REGION")
    aws_connect_timeout_seconds: float = Field(default=2.0, gt=0)
    aws_read_timeout_seconds: float = Field(default=5.0, gt=0)

    # Envelope encryption of PII and the blind index used for dedupe.
    kms_key_id: str = ""
    data_key_max_age_seconds: int = Field(default=300, ge=1, le=86_400)
    blind_index_secret_arn: str = ""
    blind_index_key: SecretStr | None = None

    # Where the outbox relay sends things.
    notifications_queue_url: str = ""
    event_bus_name: str = "default"
    # The sweeper leaves rows younger than this to the post-commit relay.
    outbox_sweep_min_age_seconds: float = Field(default=5.0, ge=0)
    # The after-response relay's budget: one attempt per call with these timeouts, and all of
    # an invocation's rows within the total; what is left is the sweeper's.
    relay_connect_timeout_seconds: float = Field(default=0.5, gt=0, le=10)
    relay_read_timeout_seconds: float = Field(default=1.0, gt=0, le=10)
    relay_budget_seconds: float = Field(default=2.0, gt=0, le=30)
    # Set by Lambda: where the Runtime and Extensions APIs listen, and "snap-start" when this
    # init is to be snapshotted (SnapStart).
    aws_lambda_runtime_api: str = Field(default="", validation_alias="AWS_LAMBDA_RUNTIME_API")
    aws_lambda_initialization_type: str = Field(
        default="on-demand", validation_alias="AWS_LAMBDA_INITIALIZATION_TYPE"
    )

    # Notifications.
    sender_email: str = "frontdesk@example.com"
    new_lead_email_template: str = "frontdesk-dev-new-lead"
    # The patient email (appointment confirmations, changes, reminders): SES template name.
    patient_email_template: str = "frontdesk-dev-patient-appointment"

    # Assistant chat (LlmWorker). The provider is chosen here; offline needs nothing.
    llm_queue_url: str = ""
    llm_provider: Literal["offline", "openai", "bedrock"] = "offline"
    # OpenAI-compatible: the base URL up to /v1; the API key from Secrets Manager (the
    # secret holds the key or {"apiKey": ...}); `llm_api_key` is for local runs and tests.
    llm_base_url: str = ""
    llm_secret_arn: str = ""
    llm_api_key: SecretStr | None = None
    llm_model: str = ""  # empty: the provider's default
    # One model call's deadline (the whole stream); the worker also keeps it inside the
    # Lambda's remaining time. The first text must come sooner: a model that has said nothing
    # after this long (or goes silent this long mid-stream) is given up on, as a timeout.
    llm_timeout_seconds: float = Field(default=20.0, gt=0, le=600)
    llm_first_token_timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    # The reply streams to staff as assistant.reply.delta events, at most one per this many
    # milliseconds (the first at once); 0 sends every chunk the model sends.
    llm_delta_interval_ms: int = Field(default=250, ge=0, le=60_000)
    llm_max_output_tokens: int = Field(default=512, ge=16, le=8192)
    llm_history_messages: int = Field(default=20, ge=0, le=200)
    # Transient failures: the message reappears after base * 2^(receive-1), jittered, capped.
    llm_retry_base_seconds: float = Field(default=2.0, ge=0)
    llm_retry_max_seconds: float = Field(default=300.0, ge=0, le=43_200)
    # The circuit breaker shared by every worker (PostgreSQL table circuit_breakers).
    llm_breaker_failure_threshold: int = Field(default=5, ge=1, le=1000)
    llm_breaker_cooldown_seconds: float = Field(default=30.0, ge=0, le=900)
    # The per-clinic budget checked before a question is accepted.
    assistant_requests_per_minute: int = Field(default=30, ge=1)
    assistant_tokens_per_day: int = Field(default=500_000, ge=1)
    # The reply cache (frontdesk.assistant.reply_cache): how long an answer is reused for the
    # same question in the same context; 0 stores none (and so answers none from it).
    assistant_reply_cache_ttl_seconds: int = Field(default=86_400, ge=0, le=30 * 86_400)

    # Dead-letter queues, one per source queue: template.yaml sets each <name>_DLQ_URL to the
    # queue named by the RedrivePolicy of <name>_QUEUE_URL's queue (a test checks the pairing).
    notifications_dlq_url: str = ""
    llm_dlq_url: str = ""
    sync_dlq_url: str = ""
    push_dlq_url: str = ""
    webhooks_dlq_url: str = ""

    # Live screens: the push queue (domain events from the bus) and the WebSocket API's
    # @connections endpoint (https://{api}.execute-api.{region}.amazonaws.com/{stage}).
    push_queue_url: str = ""
    websocket_management_url: str = ""
    # How long one PostToConnection may take (a slow browser never holds up the others).
    push_post_timeout_seconds: float = Field(default=2.0, gt=0, le=30)

    # The queues' maxReceiveCount (template.yaml): the attempt after which a message is
    # dead-lettered, so the worker can mark its job dead on that last attempt.
    max_receive_count: int = Field(default=5, ge=1, le=1000)

    # Staff authentication. In AWS the HTTP API's JWT authorizer verifies tokens and the
    # function reads the claims it passes on; `local_jwt_secret` (HS256) is for the
    # local runtime only and must never be set in AWS.
    tenant_claim: str = "clinic_id"
    roles_claim: str = "roles"
    local_jwt_secret: SecretStr | None = None
    jwt_issuer: str = "https://auth.frontdesk.local/"
    jwt_audience: str = "frontdesk-api"

    # Request limits.
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)

    # Provider sync (SyncWorker, ProviderPoller, webhooks, bulk imports).
    sync_queue_url: str = ""
    # Webhooks: the signed timestamp may be this far in the past or the future.
    webhook_tolerance_seconds: int = Field(default=300, ge=1, le=3600)
    webhook_max_body_bytes: int = Field(default=16 * 1024, ge=1024, le=1024 * 1024)
    # Provider fetches (SyncWorker): at most this many calls in flight per account at once,
    # within the account's rate limit (provider_accounts.requests_per_second); 1: one by one.
    provider_fetch_concurrency: int = Field(default=8, ge=1, le=64)
    # Provider HTTP calls: one call's timeout, attempts within one invocation, backoff.
    provider_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    provider_max_attempts: int = Field(default=4, ge=1, le=10)
    provider_backoff_base_seconds: float = Field(default=0.2, ge=0, le=30)
    provider_backoff_max_seconds: float = Field(default=5.0, ge=0, le=60)
    provider_breaker_failure_threshold: int = Field(default=5, ge=1, le=1000)
    provider_breaker_cooldown_seconds: float = Field(default=30.0, ge=0, le=900)
    # Plain-HTTP provider base URLs are refused unless this is set (the local fake provider).
    provider_allow_http: bool = False
    # Provider URLs must name public addresses (frontdesk.sync.egress). These host names,
    # addresses and networks (CIDR), comma-separated, may be called although they are not
    # public. Unset: loopback when FRONTDESK_ENV is local (make dev's fake provider on
    # 127.0.0.1), nothing anywhere else.
    provider_allowed_hosts: str | None = None
    # The poller takes at most this many changes per account per run.
    poll_max_changes: int = Field(default=500, ge=1, le=10_000)
    # CSV imports: the upload limit (API Gateway's HTTP API caps payloads at 10 MB) and the
    # window of the file the worker reads, parses and commits as one chunk.
    import_max_bytes: int = Field(default=10 * 1000 * 1000, ge=1024, le=10 * 1000 * 1000)
    import_chunk_bytes: int = Field(default=1024 * 1024, ge=256, le=16 * 1024 * 1024)

    # Outbound webhooks (frontdesk.webhooks): the webhooks queue takes the events a rule routes
    # to it and the deliveries they fan out to (WebhookWorker).
    webhooks_queue_url: str = ""
    # One call to a receiver: connecting, and each read of its answer (a slow receiver fails
    # its own attempt, never holds up the others of its batch for longer).
    webhook_connect_timeout_seconds: float = Field(default=2.0, gt=0, le=10)
    webhook_read_timeout_seconds: float = Field(default=5.0, gt=0, le=30)
    # Retries: the message reappears after a full-jitter backoff, random(0, min(max,
    # base * 2^(attempt-1))) seconds (SQS caps a delay at 900 s). The attempts are the
    # queue's maxReceiveCount (MAX_RECEIVE_COUNT).
    webhook_retry_base_seconds: float = Field(default=60.0, ge=0, le=900)
    webhook_retry_max_seconds: float = Field(default=900.0, ge=0, le=900)
    # An endpoint whose attempts failed this many times in a row is disabled (and a
    # webhook.endpoint_disabled event says so).
    webhook_disable_after_failures: int = Field(default=10, ge=1, le=1000)
    # Receiver URLs must be https:// and name public addresses (frontdesk.sync.egress), at
    # registration and again, after DNS, at every send. For tests and `make dev` only:
    # plain http:// and these host names, addresses or networks (CIDR, comma-separated)
    # although not public. Unset: nothing (the local runtime and the tests set loopback).
    webhook_allow_http: bool = False
    webhook_allowed_hosts: str = ""

    # Housekeeping: jobs left behind (frontdesk.ops.stuck_jobs). A job no worker has touched
    # for this long, its message not in the outbox either, has its message sent again; it
    # must exceed the longest a live message stays out of sight (SyncQueue's visibility
    # timeout, 720 s; a breaker wait, 900 s at most).
    job_rescue_after_seconds: int = Field(default=3600, ge=60, le=7 * 86_400)
    # Rescues of one job before it is given up on (dead).
    job_max_rescues: int = Field(default=3, ge=0, le=100)
    # Retention (frontdesk.ops.retention): how long rows that grow forever are kept.
    retention_outbox_sent_days: int = Field(default=7, ge=1)
    retention_idempotency_keys_hours: int = Field(default=24, ge=1)
    retention_webhook_deliveries_days: int = Field(default=30, ge=1)
    # The day rows hold the token budget of the current day: two days at least.
    retention_assistant_usage_days: int = Field(default=90, ge=2)
    # Kept as long as the DLQ keeps a dead import's message (14 days), so a replay finds it.
    retention_import_parts_days: int = Field(default=14, ge=0)
    # Longer than a DLQ keeps a message (14 days) and the nightly metrics window (35 days).
    retention_notification_deliveries_days: int = Field(default=90, ge=40)

    # Control-tower metrics. The recent run's schedule (template.yaml, rate(5 minutes)) in
    # seconds: the dashboard's Cache-Control max-age counts down from it.
    metrics_refresh_seconds: int = Field(default=300, ge=1, le=86_400)
    # One metrics run is one transaction; it may take longer than a request's statement.
    metrics_statement_timeout_ms: int = Field(default=60_000, ge=1000, le=900_000)

    def connect_options(self) -> ConnectOptions:
        """How this container opens its database connections."""
        from frontdesk.platform.db import ConnectOptions

        return ConnectOptions(
            connect_timeout_s=self.db_connect_timeout_seconds,
            statement_timeout_ms=self.db_statement_timeout_ms,
            startup_options=self.db_startup_options,
            sslmode=self.db_sslmode,
            sslrootcert=self.db_sslrootcert,
        )

    @field_validator("provider_allowed_hosts", "webhook_allowed_hosts")
    @classmethod
    def _allow_list(cls, value: str | None) -> str | None:
        for entry in (value or "").split(","):
            entry = entry.strip()
            if entry and not _HOST_OR_NETWORK.match(entry):
                raise ValueError(f"not a host name, address or network: {entry!r}")
        return value

    def provider_allow_list(self) -> list[str]:
        """PROVIDER_ALLOWED_HOSTS as a list, with its default for FRONTDESK_ENV=local."""
        raw = self.provider_allowed_hosts
        if raw is None:
            raw = "127.0.0.1,::1,localhost" if self.frontdesk_env == "local" else ""
        return _entries(raw)

    def webhook_allow_list(self) -> list[str]:
        """WEBHOOK_ALLOWED_HOSTS as a list."""
        return _entries(self.webhook_allowed_hosts)

    def queue_urls(self) -> dict[str, str]:
        """Logical queue name (as stored in outbox rows) -> queue URL."""
        return {
            "notifications": self.notifications_queue_url,
            "llm": self.llm_queue_url,
            "sync": self.sync_queue_url,
            "push": self.push_queue_url,
            "webhooks": self.webhooks_queue_url,
        }

    def dead_letter_queues(self) -> dict[str, tuple[str, str]]:
        """Logical queue name -> (its DLQ URL, its source queue URL), where both are set."""
        routes = {}
        for name, source in self.queue_urls().items():
            dlq = getattr(self, f"{name}_dlq_url", "")
            if dlq and source:
                routes[name] = (dlq, source)
        return routes

    def require(self, function: str, needs: Iterable[str]) -> Settings:
        """Check at cold start that the settings `function` needs are set ("database" and
        "blind_index" accept either of their two settings). ConfigurationError names what is
        missing."""
        missing = []
        for name in needs:
            if name == "database":
                if self.database_url is None and not self.database_secret_arn:
                    missing.append("DATABASE_URL or DATABASE_SECRET_ARN")
            elif name == "blind_index":
                if self.blind_index_key is None and not self.blind_index_secret_arn:
                    missing.append("BLIND_INDEX_SECRET_ARN or BLIND_INDEX_KEY")
            elif name not in Settings.model_fields:
                raise ValueError(f"{function} needs an unknown setting {name!r}")
            elif getattr(self, name) in (None, ""):
                missing.append(name.upper())
        if missing:
            raise ConfigurationError(
                f"{function} cannot start: set {', '.join(missing)} in its environment"
                " (template.yaml gives every function the variables it needs)"
            )
        return self


class ConfigurationError(RuntimeError):
    """A function is missing settings it needs: it fails at cold start, not at the first
    message."""


def _entries(raw: str) -> list[str]:
    """The entries of a comma-separated setting, trimmed, the empty ones left out."""
    return [entry.strip() for entry in raw.split(",") if entry.strip()]
