"""Clinics: the tenants. Every other row belongs to one."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from uuid import UUID

from frontdesk.errors import Unauthorized
from frontdesk.platform.db import Database, transaction


def hash_form_key(form_key: str) -> bytes:
    return hashlib.sha256(form_key.encode()).digest()


def new_form_key() -> str:
    return "fk_" + secrets.token_urlsafe(24)


def create_clinic(
    db: Database,
    *,
    name: str,
    notify_email: str | None,
    form_key: str | None = None,
    clinic_id: UUID | None = None,
) -> UUID:
    """Create (or, for the same id, update) a clinic. Used by seeding and tests."""
    clinic_id = clinic_id or uuid.uuid4()
    with transaction(db) as cur:
        cur.execute(
            """INSERT INTO clinics (id, name, notify_email, form_key_hash)
               VALUES (%(id)s, %(name)s, %(notify_email)s, %(form_key_hash)s)
               ON CONFLICT (id) DO UPDATE SET name = excluded.name,
                   notify_email = excluded.notify_email, form_key_hash = excluded.form_key_hash""",
            {
                "id": clinic_id,
                "name": name,
                "notify_email": notify_email,
                "form_key_hash": hash_form_key(form_key) if form_key else None,
            },
        )
    return clinic_id


def clinic_for_form_key(db: Database, form_key: str) -> UUID:
    # One statement, so no transaction around it (BEGIN and COMMIT would be two more round
    # trips on every web form's POST): the connection is in autocommit mode.
    with db.connection() as conn:
        row = conn.execute(
            "SELECT id FROM clinics WHERE form_key_hash = %(hash)s",
            {"hash": hash_form_key(form_key)},
        ).fetchone()
    if row is None:
        raise Unauthorized("unknown form key")
    clinic_id: UUID = row["id"]
    return clinic_id


class KnownClinics:
    """Whether the clinic a staff token names exists, looked up once per container and
    clinic (again after `ttl_seconds`), not on every request.

    Only clinics found are remembered: clinics are never deleted, and a clinic created after
    a miss is found by the next request. Thread-safe (the local server is concurrent)."""

    def __init__(self, db: Database, ttl_seconds: float = 300.0, max_size: int = 10_000) -> None:
        self._db = db
        self._ttl = ttl_seconds
        self._max_size = max_size
        self._seen: OrderedDict[UUID, float] = OrderedDict()
        self._lock = threading.Lock()

    def exists(self, clinic_id: UUID) -> bool:
        with self._lock:
            seen = self._seen.get(clinic_id)
            if seen is not None and time.monotonic() - seen < self._ttl:
                return True
        with transaction(self._db) as cur:
            cur.execute("SELECT 1 FROM clinics WHERE id = %(id)s", {"id": clinic_id})
            found = cur.fetchone() is not None
        if found:
            self.remember(clinic_id)
        return found

    def remember(self, clinic_id: UUID) -> None:
        """A clinic known to exist (just found, or just created)."""
        with self._lock:
            self._seen[clinic_id] = time.monotonic()
            self._seen.move_to_end(clinic_id)
            while len(self._seen) > self._max_size:
                self._seen.popitem(last=False)
