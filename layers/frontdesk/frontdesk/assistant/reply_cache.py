"""The assistant's reply cache: per clinic, the model's answer to a question in a context,
reused for the same question in the same context until it expires.

**Key.** `key = SHA-256(clinic id, HMAC(question), digest(context))`:
- the question is casefolded, its whitespace collapsed and trimmed, then MACed with the
  blind-index key (`BlindIndex.reply_question`, bound to the clinic), so a key, a job's
  payload or a log line never holds the question or anything that can be checked against
  a guess without the key;
- the context is what the model is given besides the question (frontdesk.assistant.context:
  the system prompt with the clinic's numbers, and the ids of the earlier turns): when a
  lead arrives or the conversation goes on, the key changes and the old answer is not
  reused.
The request path computes the question's MAC (the API holds the blind-index key) and passes
it to the worker in the job's payload; the worker, which never needs that key, finishes the
key from the context it actually gave the model, so an entry always matches its answer.

**Rows.** `assistant_reply_cache (clinic_id, key)`: the answer envelope-encrypted like a
message, the provider and model that wrote it, and `expires_at` (now + the TTL,
ASSISTANT_REPLY_CACHE_TTL_SECONDS, when the answer was stored; 0 stores nothing). A lookup
is one primary-key read with the clinic in the key: one clinic never reads another's
answer. Housekeeping deletes expired rows (frontdesk.ops.retention).

**A hit is answered in the POST.** The rule is to wait only for what the response needs;
for a cached answer the response needs one indexed read (plus the context's numbers, two
small indexed counts) and a decryption, about a millisecond, so the POST stores the
question and the reply `done` with `cached: true` in its own unit of work and answers 201.
Sending it through the queue would add a queue round trip, a worker invocation and the
client's poll to an answer that already exists. A hit calls no model and charges no budget
(neither the minute's requests nor the day's tokens); its job row is written already
succeeded (no queue message), so `GET /jobs/{id}` and the reply's events look like any
reply's. A miss goes on as before: 202, the worker calls the model and stores the answer
in the cache in the reply's own transaction.

**Bypass.** `"cache": false` in the body or `Cache-Control: no-cache` skips the lookup (the
fresh answer replaces the entry); `Cache-Control: no-store` also keeps the answer out of
the cache.

**Metric.** `AssistantReplyCacheHits` and `AssistantReplyCacheMisses` (Powertools EMF,
namespace Frontdesk) per looked-up question: the hit ratio is hits / (hits + misses);
bypassed questions count in neither.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

from frontdesk.assistant import context
from frontdesk.platform.crypto import DataKey, EnvelopeCipher, field_aad
from frontdesk.platform.db import Cursor, Database, transaction

KEY_VERSION = b"frontdesk.reply-cache.v1\0"


@dataclass(frozen=True)
class CacheUse:
    """What a question asks of the cache: its MAC, whether to look it up, whether its answer
    may be stored."""

    question_mac: bytes
    look_up: bool = True
    store: bool = True

    @classmethod
    def of(
        cls,
        question_mac: bytes,
        *,
        body_cache: bool,
        cache_control: str | None,
        enabled: bool = True,
    ) -> CacheUse:
        """From the request's `cache` field and Cache-Control header; nothing of it when the
        cache is off (a TTL of 0)."""
        directives = {d.strip().lower() for d in (cache_control or "").split(",")}
        no_store = not enabled or "no-store" in directives
        look_up = body_cache and not no_store and "no-cache" not in directives
        return cls(question_mac, look_up=look_up, store=not no_store)


@dataclass(frozen=True)
class CachedAnswer:
    text: str
    provider: str | None
    model: str | None


def cache_key(
    clinic_id: UUID, question_mac: bytes, system: str, earlier_turn_ids: Sequence[UUID]
) -> bytes:
    h = hashlib.sha256(KEY_VERSION)
    h.update(clinic_id.bytes)
    h.update(question_mac)
    h.update(context.digest(system, earlier_turn_ids))
    return h.digest()


def _aad(clinic_id: UUID, key: bytes) -> bytes:
    return field_aad("assistant_reply_cache", f"{clinic_id}/{key.hex()}", "answer")


def look_up(
    db: Database,
    cipher: EnvelopeCipher,
    *,
    clinic_id: UUID,
    conversation_id: UUID | None,
    question_mac: bytes,
    history_messages: int,
) -> CachedAnswer | None:
    """The cached answer to a question about to be asked (in `conversation_id`, None for a
    new conversation), or None. One short read-only transaction; decrypted after it."""
    with transaction(db) as cur:
        system = context.system_prompt(cur, clinic_id, None)
        earlier: list[UUID] = []
        if conversation_id is not None:
            # The worker reads max(1, N) turns, the question included: N - 1 before it.
            turns = context.history(
                cur, clinic_id, conversation_id, until=None, limit=max(1, history_messages) - 1
            )
            earlier = [row["id"] for row in turns]
        key = cache_key(clinic_id, question_mac, system, earlier)
        cur.execute(
            """SELECT answer_enc, dek, provider, model FROM assistant_reply_cache
               WHERE clinic_id = %(clinic_id)s AND key = %(key)s AND expires_at > now()""",
            {"clinic_id": clinic_id, "key": key},
        )
        row = cur.fetchone()
    if row is None:
        return None
    text = cipher.decrypt(bytes(row["dek"]), bytes(row["answer_enc"]), _aad(clinic_id, key))
    assert text is not None
    return CachedAnswer(text, row["provider"], row["model"])


@dataclass(frozen=True)
class Entry:
    """An answer to store, encrypted before the transaction that stores it."""

    clinic_id: UUID
    key: bytes
    answer_enc: bytes
    data_key: DataKey
    provider: str | None
    model: str | None
    ttl_seconds: int

    @classmethod
    def seal(
        cls,
        data_key: DataKey,
        *,
        clinic_id: UUID,
        key: bytes,
        answer: str,
        provider: str | None,
        model: str | None,
        ttl_seconds: int,
    ) -> Entry:
        blob = EnvelopeCipher.encrypt(data_key, answer, _aad(clinic_id, key))
        assert blob is not None
        return cls(clinic_id, key, blob, data_key, provider, model, ttl_seconds)


def store(cur: Cursor, entry: Entry) -> None:
    """The answer for its key, replacing an older one (in the reply's transaction)."""
    cur.execute(
        """INSERT INTO assistant_reply_cache AS c
                  (clinic_id, key, answer_enc, dek, kms_key_id, provider, model, created_at,
                   expires_at)
           VALUES (%(clinic_id)s, %(key)s, %(answer)s, %(dek)s, %(kms_key_id)s, %(provider)s,
                   %(model)s, now(), now() + make_interval(secs => %(ttl)s))
           ON CONFLICT (clinic_id, key) DO UPDATE
               SET answer_enc = excluded.answer_enc, dek = excluded.dek,
                   kms_key_id = excluded.kms_key_id, provider = excluded.provider,
                   model = excluded.model, created_at = excluded.created_at,
                   expires_at = excluded.expires_at""",
        {
            "clinic_id": entry.clinic_id,
            "key": entry.key,
            "answer": entry.answer_enc,
            "dek": entry.data_key.encrypted,
            "kms_key_id": entry.data_key.kms_key_id,
            "provider": entry.provider,
            "model": entry.model,
            "ttl": entry.ttl_seconds,
        },
    )


def purge_expired(db: Database, *, limit: int) -> int:
    """Delete up to `limit` expired answers (Housekeeping)."""
    with transaction(db) as cur:
        cur.execute(
            """DELETE FROM assistant_reply_cache WHERE (clinic_id, key) IN (
                   SELECT clinic_id, key FROM assistant_reply_cache
                   WHERE expires_at <= now() LIMIT %(limit)s)""",
            {"limit": limit},
        )
        return cur.rowcount
