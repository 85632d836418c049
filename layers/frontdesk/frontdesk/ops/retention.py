"""Retention: the rows that grow with every request or delivery, deleted once no one needs
them, on Housekeeping's hourly run. One setting per table (RETENTION_*):

- `outbox`: rows sent more than RETENTION_OUTBOX_SENT_DAYS ago (unsent rows never);
- `idempotency_keys`: keys older than RETENTION_IDEMPOTENCY_KEYS_HOURS (a retry after that
  is a new request);
- `webhook_deliveries`: deliveries received more than RETENTION_WEBHOOK_DELIVERIES_DAYS ago;
- `outbound_webhook_deliveries` (and their attempts): outbound deliveries that ended, made
  more than RETENTION_WEBHOOK_DELIVERIES_DAYS ago;
- `assistant_usage`: day rows older than RETENTION_ASSISTANT_USAGE_DAYS, minute rows after
  an hour;
- `lead_import_parts`: files of imports whose job ended more than
  RETENTION_IMPORT_PARTS_DAYS ago;
- `notification_deliveries`: the record of each email and SMS sent or failed, after
  RETENTION_NOTIFICATION_DELIVERIES_DAYS (frontdesk.notifications);
- `websocket_connections`: connections API Gateway has closed by now (past their 2 hours)
  without telling us (a `$disconnect` can be lost).
- `assistant_reply_cache`: answers past their `expires_at` (stored with
  ASSISTANT_REPLY_CACHE_TTL_SECONDS; frontdesk.assistant.reply_cache).
- `webhook_endpoints`: a rotated-out signing secret once its time is up (the endpoint stays).

Each table is deleted from in bounded batches, one short transaction each, until nothing is
left or the run's time is up (the next run goes on). The same run encrypts the assistant's
messages and titles stored in plaintext before migration 0009, a batch at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from frontdesk import notifications
from frontdesk.assistant import conversations, reply_cache
from frontdesk.config import Settings
from frontdesk.leads import imports
from frontdesk.platform import idempotency, outbox
from frontdesk.platform.crypto import EnvelopeCipher
from frontdesk.platform.db import Database
from frontdesk.push import connections
from frontdesk.sync import webhooks
from frontdesk.webhooks import delivery as outbound
from frontdesk.webhooks import endpoints

# Rows per statement; parts are up to 1 MiB each, so fewer of them at once.
_BATCH = 5000
_PART_BATCH = 100
_ENCRYPT_BATCH = 500


@dataclass(frozen=True)
class RetentionPolicy:
    outbox_sent_days: int
    idempotency_keys_hours: int
    webhook_deliveries_days: int
    assistant_usage_days: int
    import_parts_days: int
    notification_deliveries_days: int

    @classmethod
    def from_settings(cls, settings: Settings) -> RetentionPolicy:
        return cls(
            outbox_sent_days=settings.retention_outbox_sent_days,
            idempotency_keys_hours=settings.retention_idempotency_keys_hours,
            webhook_deliveries_days=settings.retention_webhook_deliveries_days,
            assistant_usage_days=settings.retention_assistant_usage_days,
            import_parts_days=settings.retention_import_parts_days,
            notification_deliveries_days=settings.retention_notification_deliveries_days,
        )


def run(
    db: Database, cipher: EnvelopeCipher, policy: RetentionPolicy, *, deadline: float
) -> dict[str, int]:
    """Delete what is past its retention and encrypt leftover plaintext until done or
    `deadline` (time.monotonic()); returns the rows handled per table."""
    steps: dict[str, tuple[Callable[[int], int], int]] = {
        "outbox": (
            lambda n: outbox.purge_sent(db, older_than_days=policy.outbox_sent_days, limit=n),
            _BATCH,
        ),
        "idempotency_keys": (
            lambda n: idempotency.purge_expired(
                db, retention_hours=policy.idempotency_keys_hours, limit=n
            ),
            _BATCH,
        ),
        "webhook_deliveries": (
            lambda n: webhooks.purge_deliveries(
                db, older_than_days=policy.webhook_deliveries_days, limit=n
            ),
            _BATCH,
        ),
        "outbound_webhook_deliveries": (
            lambda n: outbound.purge_ended(
                db, older_than_days=policy.webhook_deliveries_days, limit=n
            ),
            _BATCH,
        ),
        "assistant_usage": (
            lambda n: conversations.purge_usage(
                db, older_than_days=policy.assistant_usage_days, limit=n
            ),
            _BATCH,
        ),
        "lead_import_parts": (
            lambda n: imports.purge_finished_parts(
                db, older_than_days=policy.import_parts_days, limit=n
            ),
            _PART_BATCH,
        ),
        "notification_deliveries": (
            lambda n: notifications.purge_ended(
                db, older_than_days=policy.notification_deliveries_days, limit=n
            ),
            _BATCH,
        ),
        "websocket_connections": (
            lambda n: connections.forget_expired(db, limit=n),
            _BATCH,
        ),
        "assistant_reply_cache": (
            lambda n: reply_cache.purge_expired(db, limit=n),
            _BATCH,
        ),
        "webhook_previous_secrets": (
            lambda n: endpoints.forget_expired_secrets(db, limit=n),
            _BATCH,
        ),
        "encrypted_plaintext": (
            lambda n: conversations.encrypt_plaintext(db, cipher, limit=n),
            _ENCRYPT_BATCH,
        ),
    }
    done: dict[str, int] = {}
    for name, (step, batch) in steps.items():
        total = 0
        while time.monotonic() < deadline:
            handled = step(batch)
            total += handled
            if handled < batch:
                break
        done[name] = total
    return done
