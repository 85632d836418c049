"""What the assistant's reply events carry: `assistant.reply.delta` and `assistant.reply.done`.

LlmWorker streams a reply to staff as it is generated (frontdesk.assistant.replies): a few
times a second an `assistant.reply.delta` with the text since the previous one, then one
`assistant.reply.done`, also when the reply fails. Both go through the outbox like every
domain event, so each has a stable `eventId`, then EventBridge and the push queue to the
PushWorker, which posts them to the conversation's subscribers.

**The rule: a reply's text is never in an event in plaintext.** A reply is PII like the
question it answers (models quote questions, and questions name patients), and the bus
carries it through three stores: the outbox table (rows kept RETENTION_OUTBOX_SENT_DAYS),
EventBridge and SQS. So the text is envelope-encrypted exactly as the stored reply is: a
delta's text (`encryptedDelta`) and the done event's content (`encryptedContent`) are
AES-256-GCM ciphertexts under the container's data key, the KMS-encrypted data key beside
them, with associated data binding each ciphertext to its reply, attempt and position
(`seq`), so no ciphertext can pass for another event's text. Everything else in these
events is ids, counters, a status and, on failure, an error (errors are written to be shown
to staff and logged; they never quote the model or the question).

Only the PushWorker turns an event into what a browser receives, right before posting it
over TLS to the clinic's authorized connections: `for_client(cipher, detail_type, detail)`
decrypts (one KMS Decrypt per data key, cached per container like every data key: a data
key is reused for five minutes, so a whole reply is one key) and returns the client's shape,
`delta` and `content` in plaintext; any other event comes back as it is. So the PushWorker
needs `kms:Decrypt` on the PII key and KMS_KEY_ID, as every reader of PII does.

Rejected: plaintext deltas whose outbox rows are deleted once sent (the text would still sit
in plaintext in the outbox while EventBridge is unreachable, minutes until the sweeper sends
it, in the WAL and backups, and in EventBridge and SQS); ids and a pointer to the text (the
PushWorker would read a table of partial replies per delta: a write and a read per delta
instead of AES-GCM, for the same ciphertext at rest).

What a client gets (`for_client`):

    assistant.reply.delta  {"eventId", "replyId", "conversationId", "clinicId", "jobId",
                            "attempt", "seq", "reset", "delta"}
    assistant.reply.done   {"eventId", "replyId", "conversationId", "clinicId", "jobId",
                            "attempt", "status": "done" | "failed", "cached", "content",
                            "error"}

`seq` counts 1, 2, ... within one attempt; the deltas of an attempt, joined in `seq` order,
are the stored reply. A retry (the worker died or the model failed mid-stream) streams
again from the start with the next `attempt`, and its first delta says `reset: true`: drop
what was shown. Events can arrive out of order and twice (SQS), so a client keeps, per
reply, the attempt and the last `seq` it showed: it ignores a delta of an earlier attempt,
a `seq` it has shown, and any delta after `done`; it starts over on a later attempt; it
applies deltas in `seq` order (a gap: wait, or read the reply); `done` with its `content`
replaces whatever it showed. A reply answered from the reply cache
(frontdesk.assistant.reply_cache) has no deltas: one `done` with `cached: true` and
`attempt: 0`, written by the request that asked.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from frontdesk.platform.crypto import DataKey, EnvelopeCipher, field_aad
from frontdesk.platform.queues import EventType


@dataclass(frozen=True)
class ReplyRef:
    """The ids every event of one reply carries."""

    reply_id: UUID
    conversation_id: UUID
    clinic_id: UUID
    job_id: UUID

    def ids(self) -> dict[str, Any]:
        return {
            "replyId": str(self.reply_id),
            "conversationId": str(self.conversation_id),
            "clinicId": str(self.clinic_id),
            "jobId": str(self.job_id),
        }


def _delta_aad(reply_id: object, attempt: int, seq: int) -> bytes:
    return field_aad(EventType.ASSISTANT_REPLY_DELTA.value, reply_id, f"{attempt}.{seq}")


def _done_aad(reply_id: object, attempt: int) -> bytes:
    return field_aad(EventType.ASSISTANT_REPLY_DONE.value, reply_id, str(attempt))


def _sealed(key: DataKey, text: str, aad: bytes) -> dict[str, str]:
    blob = EnvelopeCipher.encrypt(key, text, aad)
    assert blob is not None
    return {
        "ciphertext": base64.b64encode(blob).decode(),
        "dataKey": base64.b64encode(key.encrypted).decode(),
    }


def _opened(cipher: EnvelopeCipher, sealed: dict[str, str], aad: bytes) -> str:
    text = cipher.decrypt(
        base64.b64decode(sealed["dataKey"]), base64.b64decode(sealed["ciphertext"]), aad
    )
    assert text is not None
    return text


def delta(reply: ReplyRef, key: DataKey, *, attempt: int, seq: int, text: str) -> dict[str, Any]:
    """The detail of an `assistant.reply.delta` (encrypt before the transaction: `key` comes
    from `cipher.data_key()`, which may call KMS)."""
    return {
        **reply.ids(),
        "attempt": attempt,
        "seq": seq,
        "reset": attempt > 1 and seq == 1,
        "encryptedDelta": _sealed(key, text, _delta_aad(reply.reply_id, attempt, seq)),
    }


def done(
    reply: ReplyRef, key: DataKey, *, attempt: int, content: str, cached: bool = False
) -> dict[str, Any]:
    """The detail of an `assistant.reply.done` for a reply stored (`cached`: answered from
    the reply cache in the request, attempt 0, no deltas before it)."""
    return {
        **reply.ids(),
        "attempt": attempt,
        "status": "done",
        "cached": cached,
        "encryptedContent": _sealed(key, content, _done_aad(reply.reply_id, attempt)),
        "error": None,
    }


def failed(reply: ReplyRef, *, attempt: int, error: str) -> dict[str, Any]:
    """The detail of an `assistant.reply.done` for a reply that failed (no text to carry)."""
    return {
        **reply.ids(),
        "attempt": attempt,
        "status": "failed",
        "cached": False,
        "error": error,
    }


def for_client(cipher: EnvelopeCipher, detail_type: str, detail: dict[str, Any]) -> dict[str, Any]:
    """An event's detail as a subscribed client receives it: a reply's text decrypted (it
    raises if the ciphertext is not this event's), any other event's detail as it is."""
    if detail_type == EventType.ASSISTANT_REPLY_DELTA:
        shown = {k: v for k, v in detail.items() if k != "encryptedDelta"}
        aad = _delta_aad(detail["replyId"], int(detail["attempt"]), int(detail["seq"]))
        shown["delta"] = _opened(cipher, detail["encryptedDelta"], aad)
        return shown
    if detail_type == EventType.ASSISTANT_REPLY_DONE:
        shown = {k: v for k, v in detail.items() if k != "encryptedContent"}
        sealed = detail.get("encryptedContent")
        aad = _done_aad(detail["replyId"], int(detail["attempt"]))
        shown["content"] = _opened(cipher, sealed, aad) if sealed else None
        shown.setdefault("error", None)
        shown.setdefault("cached", False)
        return shown
    return detail


class Coalescer:
    """Deltas a few a second: the first text at once (the time to the first delta is what a
    reader feels), then whatever has arrived since, once `interval_seconds` have passed since
    the previous delta. A pause of the model holds back at most what came before it until
    its next chunk or its end."""

    def __init__(self, interval_seconds: float) -> None:
        self._interval = interval_seconds
        self._pending: list[str] = []
        self._last: float | None = None

    def add(self, text: str, now: float) -> str | None:
        """Take a chunk; the delta to send now, if it is time."""
        self._pending.append(text)
        if self._last is not None and now - self._last < self._interval:
            return None
        self._last = now
        return self.rest()

    def rest(self) -> str:
        """What has not been sent (the stream's last delta)."""
        text, self._pending = "".join(self._pending), []
        return text
