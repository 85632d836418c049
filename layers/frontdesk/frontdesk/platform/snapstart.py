"""SnapStart: ApiFunction's initialised environment is snapshotted once per published
version and every cold start restores a copy of it.

So everything import- and init-time happens before the snapshot, including what the first
request would otherwise pay for: the boto3 session and the clients the request path uses,
psycopg and the cipher's code. And nothing unique or time-bound is carried into the copies:
before the snapshot the database connection is closed (every copy would share one socket),
data keys and secrets are dropped; after each restore `random` is reseeded, and the
connection, the data key and the secrets come back at first use.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from frontdesk.observability import logger

if TYPE_CHECKING:
    from frontdesk.services import Services

# The clients the request path and the after-response relay use.
WARM_CLIENTS = ("kms", "secretsmanager", "sqs", "events")


def prepare_snapshot(services: Services) -> None:
    """Do at init what the first request would do, and register the runtime hooks."""
    from snapshot_restore_py import register_after_restore, register_before_snapshot

    for service in WARM_CLIENTS:
        services.aws.client(service)
    services.relay_publisher.warm()
    import psycopg  # noqa: F401 - imported now, not by the first request
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: F401

    register_before_snapshot(before_snapshot, services)
    register_after_restore(after_restore, services)


def before_snapshot(services: Services) -> None:
    """Nothing unique or time-bound may be copied into every restored environment."""
    services.database.close()
    services.cipher.forget_keys()
    services.aws.forget_secrets()


def after_restore(services: Services) -> None:
    """Each restored copy starts from the same memory: make it its own."""
    random.seed()
    services.cipher.forget_keys()
    services.aws.forget_secrets()
    logger.info("restored from a snapshot")
