"""Idempotency-Key: a retried POST returns the first result and writes nothing new.

The key row is inserted in the same transaction as the POST's effect (the unit of work
calls `claim` before the write and `record` after it). A concurrent
request with the same key blocks on the primary key until the first commits (then it
finds the stored result) or rolls back (then it proceeds as the first).

A response that holds a secret (a generated webhook secret, shown once) is stored sealed:
envelope-encrypted under a data key (`seal`, bound to the clinic and the key), so a replay
can show it again and the table never holds it in plaintext.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

from psycopg.types.json import Jsonb

from frontdesk.errors import Conflict, IdempotencyKeyReused, InvalidInput
from frontdesk.platform.db import Cursor, Database, transaction

if TYPE_CHECKING:
    from frontdesk.platform.crypto import EnvelopeCipher

MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class IdempotencyRequest:
    key: str
    request_hash: bytes

    @classmethod
    def of(cls, key: str | None, operation: str, body: Any) -> IdempotencyRequest | None:
        """From the header value and the validated request (its canonical JSON form)."""
        if key is None:
            return None
        if not 1 <= len(key) <= MAX_KEY_LENGTH or not key.isprintable():
            raise InvalidInput(
                f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable characters"
            )
        canonical = json.dumps([operation, body], sort_keys=True, default=str).encode()
        return cls(key, hashlib.sha256(canonical).digest())


def claim(cur: Cursor, clinic_id: UUID, request: IdempotencyRequest) -> Any | None:
    """Take the key for this request, or find the response stored under it: None when this
    request is the first (its write follows), else the stored response. The key reused with
    another body is IdempotencyKeyReused (422)."""
    cur.execute(
        """INSERT INTO idempotency_keys (clinic_id, key, request_hash)
           VALUES (%(clinic_id)s, %(key)s, %(hash)s)
           ON CONFLICT (clinic_id, key) DO NOTHING
           RETURNING key""",
        {"clinic_id": clinic_id, "key": request.key, "hash": request.request_hash},
    )
    if cur.fetchone() is not None:
        return None
    return _stored(cur, clinic_id, request)


def _stored(cur: Cursor, clinic_id: UUID, request: IdempotencyRequest) -> Any | None:
    """The response stored under a key another request took (None while it runs);
    IdempotencyKeyReused when that request had another body."""
    cur.execute(
        """SELECT request_hash, response FROM idempotency_keys
           WHERE clinic_id = %(clinic_id)s AND key = %(key)s""",
        {"clinic_id": clinic_id, "key": request.key},
    )
    stored = cur.fetchone()
    assert stored is not None  # committed by the request that inserted it
    if bytes(stored["request_hash"]) != request.request_hash:
        raise IdempotencyKeyReused(
            "this Idempotency-Key was already used with a different request body"
        )
    return stored["response"]


def record(cur: Cursor, clinic_id: UUID, request: IdempotencyRequest, response: Any) -> None:
    """Store the response of the request that took the key, in its own transaction."""
    cur.execute(
        """UPDATE idempotency_keys SET response = %(response)s
           WHERE clinic_id = %(clinic_id)s AND key = %(key)s""",
        {"clinic_id": clinic_id, "key": request.key, "response": Jsonb(response)},
    )


# A key taken by a write outside the database (`begin`) whose request has not finished for
# this long is taken over: its process died (the write it guards is safe to repeat).
TAKE_OVER_AFTER_SECONDS = 300


def begin(db: Database, clinic_id: UUID, request: IdempotencyRequest) -> Any | None:
    """`claim` for a write whose effect is not in the database (messages moved between
    queues), which no transaction may span: the key is taken in a transaction of its own.
    None: go ahead, then `finish` (or `abandon` on failure); else the stored response. The
    key of a request still running is a Conflict (409: retry shortly)."""
    with transaction(db) as cur:
        cur.execute(
            """INSERT INTO idempotency_keys (clinic_id, key, request_hash)
               VALUES (%(clinic_id)s, %(key)s, %(hash)s)
               ON CONFLICT (clinic_id, key) DO UPDATE SET created_at = now()
                   WHERE idempotency_keys.response IS NULL
                     AND idempotency_keys.request_hash = EXCLUDED.request_hash
                     AND idempotency_keys.created_at
                         < now() - make_interval(secs => %(take_over)s)
               RETURNING key""",
            {
                "clinic_id": clinic_id,
                "key": request.key,
                "hash": request.request_hash,
                "take_over": TAKE_OVER_AFTER_SECONDS,
            },
        )
        if cur.fetchone() is not None:
            return None
        response = _stored(cur, clinic_id, request)
    if response is None:
        raise Conflict("a request with this Idempotency-Key is still running: retry shortly")
    return response


def finish(db: Database, clinic_id: UUID, request: IdempotencyRequest, response: Any) -> None:
    """The response of a write `begin` let through."""
    with transaction(db) as cur:
        record(cur, clinic_id, request, response)


def abandon(db: Database, clinic_id: UUID, request: IdempotencyRequest) -> None:
    """A write `begin` let through failed: the key is free for a retry."""
    with transaction(db) as cur:
        cur.execute(
            """DELETE FROM idempotency_keys
               WHERE clinic_id = %(clinic_id)s AND key = %(key)s AND response IS NULL""",
            {"clinic_id": clinic_id, "key": request.key},
        )


def _aad(clinic_id: UUID, key: str) -> bytes:
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"idempotency_keys:{clinic_id}/{digest}:response".encode()


def seal(cipher: EnvelopeCipher, clinic_id: UUID, key: str, response: Any) -> dict[str, str]:
    """The response as it is stored when it holds a secret: encrypted, with its data key
    (encrypted by KMS)."""
    data_key = cipher.data_key()
    blob = cipher.encrypt(data_key, json.dumps(response), _aad(clinic_id, key))
    assert blob is not None
    return {
        "sealed": base64.b64encode(blob).decode(),
        "dek": base64.b64encode(data_key.encrypted).decode(),
    }


def unseal(cipher: EnvelopeCipher, clinic_id: UUID, key: str, stored: Any) -> Any:
    """The response `seal` stored."""
    opened = cipher.decrypt(
        base64.b64decode(stored["dek"]), base64.b64decode(stored["sealed"]), _aad(clinic_id, key)
    )
    assert opened is not None
    return json.loads(opened)


def purge_expired(db: Database, *, retention_hours: int, limit: int) -> int:
    """Forget up to `limit` keys older than the retention (a retry after that is a new
    request); Housekeeping."""
    with transaction(db) as cur:
        cur.execute(
            """DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY(
                   SELECT ctid FROM idempotency_keys
                   WHERE created_at < now() - make_interval(hours => %(hours)s)
                   LIMIT %(limit)s))""",
            {"hours": retention_hours, "limit": limit},
        )
        return cur.rowcount
