"""Outbound webhook deliveries (WebhookWorker): a clinic's events, signed, to its endpoints.

The rule it relies on: at least once, never in a promised order. An EventBridge rule routes
the subscribable domain events to the webhooks queue. There, `fan_out` turns a batch of
events into one delivery row per (enabled endpoint of the event's clinic that takes its
type, event) and one delivery message each, in one unit of work: a redelivered event finds
its rows (a unique index) and adds nothing. `attempt` then handles a batch of delivery
messages: one statement claims and loads them with their endpoints (a copy of a message
that another worker is posting finds the claim and posts nothing), the posts go out
concurrently (each through the SSRF rule after DNS, connected to the address checked, with
short connect and read timeouts, so a slow receiver fails its own attempt and holds up
nobody else's for long), and one unit of work records every attempt, the deliveries' states
and the endpoints' runs of failures (ending the claims), disabling an endpoint whose run
reached the threshold (with a `webhook.endpoint_disabled` event).

What a receiver gets: `POST <url>` with the JSON body `{"id": <event id>, "type",
"createdAt", "clinicId", "data": {...}}` (ids, times, statuses; never PII), the headers
`Webhook-Signature: t=<unix seconds>,v1=<hex>` (frontdesk.platform.signature: HMAC-SHA256
over "<t>." + body with the endpoint's secret), `Webhook-Event-Id`, `Webhook-Event-Type`,
`Webhook-Delivery-Id` and `Webhook-Attempt`. A 2xx is success; anything else (a redirect
too: none is followed), a timeout or a refused address is a failed attempt, retried after
a full-jitter backoff until the queue's maxReceiveCount, then dead-lettered. The same event
may arrive twice (a retry whose answer was lost, a replay): receivers dedupe on its id.
Deliveries are independent messages retried on their own schedules, so an endpoint may get
a later event before an earlier one.

An attempt's error is a class of failure ("HTTP 500", "timed out", "connection refused"),
never what the receiver answered (it could echo anything).
"""

from __future__ import annotations

import functools
import json
import math
import random
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from frontdesk.errors import Conflict, NotFound
from frontdesk.platform.crypto import EnvelopeCipher
from frontdesk.platform.db import Cursor, Database, transaction
from frontdesk.platform.queues import BusEvent, EventType, Queue, WebhookDeliveryMessage
from frontdesk.platform.signature import SIGNATURE_HEADER, sign
from frontdesk.platform.unit_of_work import UnitOfWork
from frontdesk.sync.egress import Egress, EgressRefused
from frontdesk.values import ApiModel, Timestamp
from frontdesk.webhooks.endpoints import SUBSCRIBABLE, decrypt_previous_secret, decrypt_secret

EVENT_ID_HEADER = "Webhook-Event-Id"
EVENT_TYPE_HEADER = "Webhook-Event-Type"
DELIVERY_ID_HEADER = "Webhook-Delivery-Id"
ATTEMPT_HEADER = "Webhook-Attempt"
USER_AGENT = "Frontdesk-Webhooks/1"
# Concurrent posts per batch: a few slow receivers cost one timeout, not one each.
MAX_PARALLEL_POSTS = 16
# How long a worker holds a delivery it is posting: beyond WebhookWorker's timeout (30 s),
# within the queue's visibility timeout (180 s), after which its own message comes back.
CLAIM_SECONDS = 60
# SQS: a message's delay (and so a retry's) is at most 15 minutes.
MAX_DELAY_SECONDS = 900
# What is read of a receiver's answer (and thrown away): enough to end the exchange.
_ANSWER_BYTES = 1024
_SUBSCRIBABLE = frozenset(SUBSCRIBABLE)


def retry_delay(attempt: int, base: float, cap: float) -> int:
    """Full jitter: random(0, min(cap, base * 2^(attempt-1))) seconds, at most 900."""
    ceiling = min(cap, base * 2 ** max(0, attempt - 1), MAX_DELAY_SECONDS)
    return math.ceil(random.uniform(0, ceiling))


# ---------------------------------------------------------------- fan-out


def payload_of(event: BusEvent) -> dict[str, Any]:
    """The body a receiver gets for `event` (its detail holds ids, never PII)."""
    data = {k: v for k, v in event.detail.items() if k not in ("eventId", "clinicId", "requestId")}
    return {
        "id": str(event.event_id),
        "type": event.detail_type.value,
        "createdAt": event.time,
        "clinicId": str(event.clinic_id),
        "data": data,
    }


def fan_out(uow: UnitOfWork, events: Sequence[BusEvent]) -> list[int]:
    """One delivery (row and message) per matching endpoint of each event, in one statement;
    the number of new deliveries of each event, in order. An event delivered twice adds
    nothing the second time."""
    wanted = [(n, e) for n, e in enumerate(events) if e.detail_type.value in _SUBSCRIBABLE]
    counts = [0] * len(events)
    if not wanted:
        return counts
    uow.cur.execute(
        """INSERT INTO outbound_webhook_deliveries
               (id, clinic_id, endpoint_id, event_id, event_type, payload)
           SELECT gen_random_uuid(), e.clinic_id, w.id, e.event_id, e.event_type, e.payload
           FROM unnest(%(n)s::int[], %(clinics)s::uuid[], %(events)s::uuid[], %(types)s::text[],
                       %(payloads)s::jsonb[]) AS e(n, clinic_id, event_id, event_type, payload)
           JOIN webhook_endpoints w
             ON w.clinic_id = e.clinic_id AND w.status = 'enabled'
            AND w.event_types @> ARRAY[e.event_type]
           ORDER BY e.n, w.created_at
           ON CONFLICT (endpoint_id, event_id) WHERE replay_of IS NULL DO NOTHING
           RETURNING id, clinic_id, event_id""",
        {
            "n": [n for n, _ in wanted],
            "clinics": [e.clinic_id for _, e in wanted],
            "events": [e.event_id for _, e in wanted],
            "types": [e.detail_type.value for _, e in wanted],
            "payloads": [Jsonb(payload_of(e)) for _, e in wanted],
        },
    )
    created = uow.cur.fetchall()
    index = {e.event_id: n for n, e in wanted}
    for row in created:
        counts[index[row["event_id"]]] += 1
    uow.send(
        Queue.WEBHOOKS,
        [
            WebhookDeliveryMessage(delivery_id=row["id"], clinic_id=row["clinic_id"]).body()
            for row in created
        ],
    )
    return counts


# ---------------------------------------------------------------- attempts


@dataclass(frozen=True)
class Posted:
    """One HTTP call's result: a status code, or an error (a class of failure)."""

    status_code: int | None
    error: str | None
    latency_ms: float

    @property
    def succeeded(self) -> bool:
        return self.error is None


def post(
    opener: urllib.request.OpenerDirector,
    url: str,
    body: bytes,
    headers: dict[str, str],
    connect_timeout: float,
) -> Posted:
    """POST `body` to `url` through `opener` (the egress rule's: DNS checked, no redirects,
    no proxies); never raises."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    started = time.perf_counter()
    code: int | None = None
    error: str | None = None
    try:
        with opener.open(request, timeout=connect_timeout) as answer:
            answer.read(_ANSWER_BYTES)
            code = int(answer.status)
    except urllib.error.HTTPError as exc:
        code = int(exc.code)
        exc.close()
    except EgressRefused as exc:
        error = f"refused: {exc}"
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, EgressRefused):
            error = f"refused: {reason}"
        elif isinstance(reason, TimeoutError | socket.timeout):
            error = "timed out"
        elif isinstance(reason, ConnectionRefusedError):
            error = "connection refused"
        else:
            error = f"connection failed ({type(reason).__name__})"
    except TimeoutError:
        error = "timed out"
    except Exception as exc:  # a reset, a malformed answer: the receiver's problem
        error = f"connection failed ({type(exc).__name__})"
    if error is None and code is not None and not 200 <= code < 300:
        error = f"HTTP {code}"
    latency = (time.perf_counter() - started) * 1000
    return Posted(code if code is not None and 100 <= code <= 599 else None, error, latency)


def _secrets(cipher: EnvelopeCipher, row: dict[str, Any]) -> list[str]:
    """The endpoint's signing secret, then the one it replaced while that is still valid."""
    endpoint = {**row, "id": row["endpoint_id"]}
    found = [decrypt_secret(cipher, endpoint)]
    if endpoint["previous_secret_enc"] is not None:
        found.append(decrypt_previous_secret(cipher, endpoint))
    return found


def signed_request(
    secrets: list[str], row: dict[str, Any], attempt: int, now: float | None = None
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one attempt of a delivery row, signed with each secret."""
    body = json.dumps(row["payload"], separators=(",", ":"), sort_keys=True).encode()
    timestamp = int(time.time() if now is None else now)
    current, *previous = (secret.encode() for secret in secrets)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        SIGNATURE_HEADER: sign(current, timestamp, body, *previous),
        EVENT_ID_HEADER: str(row["event_id"]),
        EVENT_TYPE_HEADER: str(row["event_type"]),
        DELIVERY_ID_HEADER: str(row["id"]),
        ATTEMPT_HEADER: str(attempt),
    }
    return body, headers


@dataclass(frozen=True)
class Attempted:
    """What became of one delivery message.

    `outcome`: delivered, retry (failed; again after `delay` seconds), given_up (failed on
    the last attempt: dead-letter the message), cancelled (its endpoint is disabled), done
    (delivered before: a duplicate message), duplicate (another copy of the message is being
    posted now) or gone (the endpoint was deleted)."""

    outcome: str
    reason: str = ""
    delay: int = 0


@dataclass(frozen=True)
class Policy:
    connect_timeout: float
    retry_base_seconds: float
    retry_max_seconds: float
    disable_after_failures: int


@functools.cache
def _opener(egress: Egress) -> urllib.request.OpenerDirector:
    """One opener per rule and container (its TLS context costs milliseconds to build)."""
    return egress.opener()


def _load_and_claim(db: Database, ids: Sequence[UUID]) -> dict[UUID, dict[str, Any]]:
    """The deliveries with their endpoints; `claimed` says which this worker now holds (the
    ones still to post, a failed one replayed from the DLQ too, that no other worker
    holds)."""
    with transaction(db) as cur:
        cur.execute(
            """WITH claimed AS (
                   UPDATE outbound_webhook_deliveries
                   SET claimed_until = now() + make_interval(secs => %(claim)s)
                   WHERE id = ANY(%(ids)s) AND status NOT IN ('delivered', 'cancelled')
                     AND (claimed_until IS NULL OR claimed_until < now())
                   RETURNING id)
               SELECT d.id, d.clinic_id, d.endpoint_id, d.event_id, d.event_type, d.payload,
                      d.status, d.attempts, w.url, w.status AS endpoint_status,
                      w.secret_enc, w.dek, d.id IN (SELECT id FROM claimed) AS claimed,
                      CASE WHEN w.previous_secret_expires_at > now()
                           THEN w.previous_secret_enc END AS previous_secret_enc,
                      w.previous_dek
               FROM outbound_webhook_deliveries d
               JOIN webhook_endpoints w ON w.id = d.endpoint_id
               WHERE d.id = ANY(%(ids)s)""",
            {"ids": list(ids), "claim": CLAIM_SECONDS},
        )
        return {row["id"]: dict(row) for row in cur.fetchall()}


def attempt(
    db: Database,
    cipher: EnvelopeCipher,
    egress: Egress,
    policy: Policy,
    open_unit_of_work: Any,
    messages: Sequence[tuple[WebhookDeliveryMessage, bool]],
) -> list[Attempted]:
    """Attempt each delivery of (message, is its last attempt) once; what became of each, in
    order. `open_unit_of_work()` gives the unit of work that records them."""
    rows = _load_and_claim(db, [m.delivery_id for m, _ in messages])
    results: list[Attempted | None] = [None] * len(messages)
    to_post: list[tuple[int, dict[str, Any], bool]] = []
    cancelled: list[UUID] = []
    for n, (message, last) in enumerate(messages):
        row = rows.get(message.delivery_id)
        if row is None or row["clinic_id"] != message.clinic_id:
            results[n] = Attempted("gone", "the delivery or its endpoint was deleted")
        elif row["status"] in ("delivered", "cancelled"):
            results[n] = Attempted("done", f"the delivery is {row['status']}")
        elif not row["claimed"]:
            # Another copy of this message, in this batch or another worker's, holds it: that
            # one posts, and sends its own retry if the post fails.
            results[n] = Attempted("duplicate", "another worker is posting this delivery")
        elif row["endpoint_status"] != "enabled":
            results[n] = Attempted("cancelled", "the endpoint is disabled")
            cancelled.append(row["id"])
        else:
            to_post.append((n, row, last))
        if row is not None:
            row["claimed"] = False  # a second copy in this batch is a duplicate
    secrets: dict[UUID, list[str]] = {}
    requests: list[tuple[str, bytes, dict[str, str]]] = []
    for _, row, _ in to_post:
        if row["endpoint_id"] not in secrets:
            secrets[row["endpoint_id"]] = _secrets(cipher, row)
        body, headers = signed_request(secrets[row["endpoint_id"]], row, row["attempts"] + 1)
        requests.append((row["url"], body, headers))
    posted: list[Posted] = []
    if requests:
        opener = _opener(egress)
        workers = min(MAX_PARALLEL_POSTS, len(requests))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            posted = list(
                pool.map(lambda r: post(opener, r[0], r[1], r[2], policy.connect_timeout), requests)
            )
    with open_unit_of_work() as uow:
        if cancelled:
            uow.cur.execute(
                """UPDATE outbound_webhook_deliveries SET status = 'cancelled', updated_at = now()
                   WHERE id = ANY(%(ids)s) AND status NOT IN ('delivered', 'cancelled')""",
                {"ids": cancelled},
            )
        if to_post:
            _record(
                uow,
                policy,
                [(row, last, p) for (_, row, last), p in zip(to_post, posted, strict=True)],
            )
    for (n, row, last), p in zip(to_post, posted, strict=True):
        number = row["attempts"] + 1
        if p.succeeded:
            results[n] = Attempted("delivered")
        elif last:
            results[n] = Attempted("given_up", f"attempt {number} failed: {p.error}")
        else:
            delay = retry_delay(number, policy.retry_base_seconds, policy.retry_max_seconds)
            results[n] = Attempted("retry", f"attempt {number} failed: {p.error}", delay)
    done: list[Attempted] = []
    for result in results:
        assert result is not None
        done.append(result)
    return done


def _record(
    uow: UnitOfWork, policy: Policy, attempts: Sequence[tuple[dict[str, Any], bool, Posted]]
) -> None:
    """Every attempt, the deliveries' states and the endpoints' runs, in three statements;
    then the endpoints whose run reached the threshold are disabled, each with its event."""
    cur = uow.cur
    ids = [row["id"] for row, _, _ in attempts]
    cur.execute(
        """INSERT INTO outbound_webhook_attempts
               (delivery_id, attempt, succeeded, status_code, error, latency_ms)
           SELECT * FROM unnest(%(ids)s::uuid[], %(numbers)s::int[], %(ok)s::boolean[],
                                %(codes)s::int[], %(errors)s::text[], %(latency)s::real[])""",
        {
            "ids": ids,
            "numbers": [row["attempts"] + 1 for row, _, _ in attempts],
            "ok": [p.succeeded for _, _, p in attempts],
            "codes": [p.status_code for _, _, p in attempts],
            "errors": [p.error for _, _, p in attempts],
            "latency": [round(p.latency_ms, 3) for _, _, p in attempts],
        },
    )
    cur.execute(
        """UPDATE outbound_webhook_deliveries d SET
               attempts = d.attempts + 1,
               status = CASE WHEN a.ok THEN 'delivered' WHEN a.last THEN 'failed'
                             ELSE 'retrying' END,
               delivered_at = CASE WHEN a.ok THEN now() END,
               last_status_code = a.code, last_error = a.error, updated_at = now(),
               claimed_until = NULL
           FROM unnest(%(ids)s::uuid[], %(ok)s::boolean[], %(last)s::boolean[],
                       %(codes)s::int[], %(errors)s::text[]) AS a(id, ok, last, code, error)
           WHERE d.id = a.id AND d.status NOT IN ('delivered', 'cancelled')""",
        {
            "ids": ids,
            "ok": [p.succeeded for _, _, p in attempts],
            "last": [last for _, last, _ in attempts],
            "codes": [p.status_code for _, _, p in attempts],
            "errors": [p.error for _, _, p in attempts],
        },
    )
    runs: dict[UUID, tuple[bool, int]] = {}
    for row, _, p in attempts:
        succeeded, failures = runs.get(row["endpoint_id"], (False, 0))
        runs[row["endpoint_id"]] = (succeeded or p.succeeded, failures + (not p.succeeded))
    cur.execute(
        """UPDATE webhook_endpoints w SET
               consecutive_failures = CASE WHEN r.ok THEN 0
                                           ELSE w.consecutive_failures + r.failures END,
               last_success_at = CASE WHEN r.ok THEN now() ELSE w.last_success_at END,
               last_failure_at = CASE WHEN r.failures > 0 THEN now() ELSE w.last_failure_at END
           FROM unnest(%(ids)s::uuid[], %(ok)s::boolean[], %(failures)s::int[])
               AS r(id, ok, failures)
           WHERE w.id = r.id""",
        {
            "ids": list(runs),
            "ok": [ok for ok, _ in runs.values()],
            "failures": [failures for _, failures in runs.values()],
        },
    )
    cur.execute(
        """UPDATE webhook_endpoints SET status = 'disabled', updated_at = now(),
               disabled_reason = format('%%s consecutive failed attempts', consecutive_failures)
           WHERE id = ANY(%(ids)s) AND status = 'enabled'
             AND consecutive_failures >= %(threshold)s
           RETURNING id, clinic_id, consecutive_failures, disabled_reason""",
        {"ids": list(runs), "threshold": policy.disable_after_failures},
    )
    for endpoint in cur.fetchall():
        uow.emit(
            EventType.WEBHOOK_ENDPOINT_DISABLED,
            {
                "clinicId": str(endpoint["clinic_id"]),
                "endpointId": str(endpoint["id"]),
                "consecutiveFailures": endpoint["consecutive_failures"],
                "reason": endpoint["disabled_reason"],
            },
        )


# ---------------------------------------------------------------- reading and replay


class AttemptOut(ApiModel):
    attempt: int
    succeeded: bool
    status_code: int | None
    error: str | None
    latency_ms: float
    attempted_at: Timestamp


class DeliveryOut(ApiModel):
    id: UUID
    endpoint_id: UUID
    event_id: UUID
    event_type: str
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    replay_of: UUID | None
    created_at: Timestamp
    updated_at: Timestamp
    delivered_at: Timestamp | None


class DeliveryDetail(DeliveryOut):
    """A delivery with its attempts, oldest first, and the body it sends."""

    payload: dict[str, Any]
    attempt_log: list[AttemptOut]


_DELIVERY_COLUMNS = """id, endpoint_id, event_id, event_type, status, attempts, last_status_code,
    last_error, replay_of, created_at, updated_at, delivered_at"""


def list_deliveries(
    db: Database, *, clinic_id: UUID, endpoint_id: UUID, limit: int
) -> list[DeliveryOut]:
    """An endpoint's latest deliveries, newest first (NotFound for another clinic's)."""
    with transaction(db) as cur:
        cur.execute(
            "SELECT 1 FROM webhook_endpoints WHERE id = %(id)s AND clinic_id = %(clinic)s",
            {"id": endpoint_id, "clinic": clinic_id},
        )
        if cur.fetchone() is None:
            raise NotFound(f"webhook endpoint {endpoint_id} not found")
        cur.execute(
            f"""SELECT {_DELIVERY_COLUMNS} FROM outbound_webhook_deliveries
                WHERE endpoint_id = %(id)s AND clinic_id = %(clinic)s
                ORDER BY created_at DESC, id LIMIT %(limit)s""",
            {"id": endpoint_id, "clinic": clinic_id, "limit": limit},
        )
        return [DeliveryOut.model_validate(row) for row in cur.fetchall()]


def get_delivery(db: Database, *, clinic_id: UUID, delivery_id: UUID) -> DeliveryDetail:
    with transaction(db) as cur:
        cur.execute(
            f"""SELECT {_DELIVERY_COLUMNS}, payload FROM outbound_webhook_deliveries
                WHERE id = %(id)s AND clinic_id = %(clinic)s""",
            {"id": delivery_id, "clinic": clinic_id},
        )
        row = cur.fetchone()
        if row is None:
            raise NotFound(f"webhook delivery {delivery_id} not found")
        cur.execute(
            """SELECT attempt, succeeded, status_code, error, latency_ms, attempted_at
               FROM outbound_webhook_attempts WHERE delivery_id = %(id)s ORDER BY id""",
            {"id": delivery_id},
        )
        log = [AttemptOut.model_validate(a) for a in cur.fetchall()]
    return DeliveryDetail.model_validate({**row, "attempt_log": log})


def replay(uow: UnitOfWork, *, clinic_id: UUID, delivery_id: UUID) -> DeliveryOut:
    """A new delivery of the same event to the same endpoint (same event id: a receiver that
    has it already dedupes), attempted like the first. Conflict when the endpoint is
    disabled (enable it first)."""
    cur = uow.cur
    cur.execute(
        """SELECT d.id, d.endpoint_id, w.status AS endpoint_status
           FROM outbound_webhook_deliveries d JOIN webhook_endpoints w ON w.id = d.endpoint_id
           WHERE d.id = %(id)s AND d.clinic_id = %(clinic)s
           FOR SHARE OF w""",
        {"id": delivery_id, "clinic": clinic_id},
    )
    found = cur.fetchone()
    if found is None:
        raise NotFound(f"webhook delivery {delivery_id} not found")
    if found["endpoint_status"] != "enabled":
        raise Conflict("the endpoint is disabled: enable it (PATCH enabled: true) first")
    new_id = uuid.uuid4()
    cur.execute(
        f"""INSERT INTO outbound_webhook_deliveries
                (id, clinic_id, endpoint_id, event_id, event_type, payload, replay_of)
            SELECT %(new)s, clinic_id, endpoint_id, event_id, event_type, payload, id
            FROM outbound_webhook_deliveries WHERE id = %(id)s
            RETURNING {_DELIVERY_COLUMNS}""",
        {"new": new_id, "id": delivery_id},
    )
    row = cur.fetchone()
    assert row is not None
    uow.send(
        Queue.WEBHOOKS,
        [WebhookDeliveryMessage(delivery_id=new_id, clinic_id=clinic_id).body()],
    )
    return DeliveryOut.model_validate(row)


def purge_ended(db: Database, *, older_than_days: int, limit: int) -> int:
    """Forget deliveries that ended (delivered, failed, cancelled) before the retention, at
    most `limit`, their attempts with them; one still pending or retrying stays. A delivery
    that was replayed goes after its replays (deleting it first would make them all
    originals of one event, which the unique index refuses)."""
    with transaction(db) as cur:
        cur.execute(
            """DELETE FROM outbound_webhook_deliveries WHERE id IN (
                   SELECT d.id FROM outbound_webhook_deliveries d
                   WHERE d.created_at < now() - make_interval(days => %(days)s)
                     AND d.status IN ('delivered', 'failed', 'cancelled')
                     AND NOT EXISTS (SELECT 1 FROM outbound_webhook_deliveries r
                                     WHERE r.replay_of = d.id)
                   LIMIT %(limit)s)""",
            {"days": older_than_days, "limit": limit},
        )
        return cur.rowcount


def explain(cur: Cursor, delivery_ids: Sequence[UUID]) -> dict[UUID, str]:
    """Why each dead-lettered delivery message is there: its state and last error."""
    if not delivery_ids:
        return {}
    cur.execute(
        """SELECT id, status, attempts, last_error FROM outbound_webhook_deliveries
           WHERE id = ANY(%(ids)s)""",
        {"ids": list(delivery_ids)},
    )
    return {
        row["id"]: (
            f"webhook delivery {row['status']} after {row['attempts']} attempts: "
            f"{row['last_error'] or 'no error recorded'}"
        )
        for row in cur.fetchall()
    }
