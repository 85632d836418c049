"""Provider sync: SyncWorker's jobs (fetch and upsert, validate credentials).

Every provider call happens with no transaction open: read (short transaction) -> call
the provider -> write (short transaction). Calls go through the account's shared rate
limit (provider_accounts.next_call_at), retries with exponential backoff and jitter
(honouring Retry-After on 429), and the shared PostgreSQL circuit breaker
(frontdesk.platform.breaker) named per account. The poller (frontdesk.sync.poller) uses
the same caller.

**Concurrent fetches.** A fetch job's items are fetched a group at a time, each group's
calls concurrently on a thread pool of PROVIDER_FETCH_CONCURRENCY workers (default 8), then
upserted in one short transaction, while the next group's calls are already out (a refused
group fails the job; the group in flight is waited for and dropped). The bound is per
account: one job is one account, and a container handles one record at a time. The
account's rate limit holds too: a group reserves its calls' slots in the shared
`next_call_at` in one statement (`reserve_calls`), and call i starts no sooner than its
slot (wait + i / requests_per_second), so all containers together still make at most
requests_per_second calls. Threads, not asyncio (aiolimiter): the adapters are blocking
urllib, the handler is synchronous, and the limit that matters is already shared in
PostgreSQL across containers, which an in-process limiter cannot be; a bounded
ThreadPoolExecutor is the stdlib's bound on calls in flight. The threads make HTTP calls
only: the container's one database connection stays with the record's thread. A call that
fails transiently (429, 5xx, timeout) in a group goes through `call` afterwards, alone,
with the usual retries, backoff, hold-off and breaker; a 404 counts as gone and a refusal
fails the job before its group is written, as one by one. Each group is written once, ON
CONFLICT by external id, so a redelivered job writes no duplicate.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from uuid import UUID

from frontdesk.appointments.provider_bookings import ExternalBooking
from frontdesk.appointments.provider_bookings import upsert_external as upsert_bookings
from frontdesk.leads.external import ExternalLead, check_external
from frontdesk.leads.external import upsert_external as upsert_leads
from frontdesk.observability import logger
from frontdesk.platform import breaker, jobs
from frontdesk.platform.db import Database, transaction
from frontdesk.sync import accounts as provider_accounts
from frontdesk.sync.egress import Egress
from frontdesk.sync.providers import (
    ProviderAdapter,
    ProviderBooking,
    ProviderError,
    ProviderLead,
    ProviderNotFound,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnavailable,
    adapter_for,
)

if TYPE_CHECKING:
    from frontdesk.services import Services

T = TypeVar("T")
_FETCH_GROUP = 10  # items fetched between two commits (and progress updates), at least
_GROUP_PER_WORKER = 2  # with concurrent fetches: this many items per worker per group


class TransientSyncError(Exception):
    """Worth retrying later: the message fails and SQS redelivers it."""


@dataclass(frozen=True)
class CallPolicy:
    timeout_seconds: float = 5.0
    max_attempts: int = 4
    backoff_base_seconds: float = 0.2
    backoff_max_seconds: float = 5.0
    breaker_threshold: int = 5
    breaker_cooldown_seconds: float = 30.0
    # Longer waits for the rate limit fail the record instead (SQS retries it later), so
    # an invocation never sleeps towards its timeout.
    max_wait_seconds: float = 10.0
    sleep: Callable[[float], None] = time.sleep
    # Where providers may be called (public addresses, unless allowed by settings).
    egress: Egress = field(default_factory=Egress)
    # At most this many calls of one account in flight at once (1: one after the other).
    concurrency: int = 8


def _breaker_name(account_id: UUID) -> str:
    return f"provider:{account_id}"


class ProviderCaller:
    """Calls one account's provider: rate limit, retries with backoff, circuit breaker."""

    def __init__(self, db: Database, account_id: UUID, policy: CallPolicy) -> None:
        self._db = db
        self._account_id = account_id
        self._policy = policy
        self.retries = 0

    def admit(self) -> None:
        with transaction(self._db) as cur:
            admission = breaker.admit(
                cur, _breaker_name(self._account_id), probe_lease_seconds=30.0
            )
        if not admission.allowed:
            raise TransientSyncError(
                f"circuit open for this provider account ({admission.wait_seconds:.0f} s left)"
            )

    def call(self, operation: Callable[[], T], *, attempts_made: int = 0) -> T:
        """One call with the rate limit, retries and breaker (`attempts_made`: attempts
        already spent on it by `start_many`)."""
        policy = self._policy
        attempt = attempts_made
        while True:
            attempt += 1
            with transaction(self._db) as cur:
                wait, _ = provider_accounts.reserve_calls(cur, self._account_id, 1)
            if wait > policy.max_wait_seconds:
                raise TransientSyncError(f"the provider account is rate limited for {wait:.0f} s")
            if wait > 0:
                policy.sleep(wait)
            try:
                answer = operation()
            except ProviderRateLimited as exc:
                with transaction(self._db) as cur:
                    provider_accounts.hold_off(cur, self._account_id, exc.retry_after_seconds)
                if attempt >= policy.max_attempts:
                    raise TransientSyncError(str(exc)) from None
                self.retries += 1
                policy.sleep(min(exc.retry_after_seconds, policy.backoff_max_seconds))
                continue
            except ProviderUnavailable as exc:
                if attempt >= policy.max_attempts:
                    self._failed(str(exc))
                    raise TransientSyncError(str(exc)) from None
                self.retries += 1
                backoff = min(policy.backoff_max_seconds, policy.backoff_base_seconds * 2**attempt)
                policy.sleep(backoff * random.uniform(0.5, 1.0))  # jitter
                continue
            with transaction(self._db) as cur:
                breaker.record_success(cur, _breaker_name(self._account_id))
            return answer

    def start_many(
        self, operations: Sequence[Callable[[], T]], pool: Executor | None
    ) -> Callable[[], list[T | ProviderNotFound | ProviderRejected]]:
        """Start the operations concurrently on `pool` within the rate limit, and return
        what collects their answers in order (each answer, or the ProviderNotFound /
        ProviderRejected it raised). Transient failures are retried one by one through
        `call` when collected, which raises TransientSyncError when they persist. With no
        pool, nothing starts early: collecting calls one by one and stops at the first
        refusal, as before."""
        if pool is None or len(operations) <= 1:
            return partial(self._one_by_one, operations)
        policy = self._policy
        with transaction(self._db) as cur:
            wait, spacing = provider_accounts.reserve_calls(cur, self._account_id, len(operations))
        if wait > policy.max_wait_seconds:
            raise TransientSyncError(f"the provider account is rate limited for {wait:.0f} s")
        start = time.monotonic() + wait

        def first_attempt(slot: int, operation: Callable[[], T]) -> T | ProviderError:
            delay = start + slot * spacing - time.monotonic()
            if delay > 0:
                policy.sleep(delay)
            try:
                return operation()
            except ProviderError as exc:
                return exc

        futures = [pool.submit(first_attempt, i, op) for i, op in enumerate(operations)]
        return lambda: self._collect(operations, [f.result() for f in futures])

    def _one_by_one(
        self, operations: Sequence[Callable[[], T]]
    ) -> list[T | ProviderNotFound | ProviderRejected]:
        results: list[T | ProviderNotFound | ProviderRejected] = []
        for operation in operations:
            try:
                results.append(self.call(operation))
            except (ProviderNotFound, ProviderRejected) as exc:
                results.append(exc)
                if isinstance(exc, ProviderRejected):
                    break
        return results

    def _collect(
        self, operations: Sequence[Callable[[], T]], answers: list[T | ProviderError]
    ) -> list[T | ProviderNotFound | ProviderRejected]:
        """The first attempts' answers, with the transient failures retried one by one."""
        policy = self._policy
        again: list[int] = []
        for index, answer in enumerate(answers):
            if isinstance(answer, (ProviderRateLimited, ProviderUnavailable)):
                again.append(index)
            elif isinstance(answer, ProviderError) and not isinstance(
                answer, (ProviderNotFound, ProviderRejected)
            ):
                raise answer
        limited = [a.retry_after_seconds for a in answers if isinstance(a, ProviderRateLimited)]
        with transaction(self._db) as cur:
            if limited:
                provider_accounts.hold_off(cur, self._account_id, max(limited))
            if len(again) < len(answers):
                breaker.record_success(cur, _breaker_name(self._account_id))
        if any(isinstance(answers[i], ProviderUnavailable) for i in again):
            policy.sleep(policy.backoff_base_seconds * 2 * random.uniform(0.5, 1.0))
        for index in again:
            self.retries += 1
            try:
                answers[index] = self.call(operations[index], attempts_made=1)
            except (ProviderNotFound, ProviderRejected) as exc:
                answers[index] = exc
        results: list[T | ProviderNotFound | ProviderRejected] = []
        for answer in answers:
            assert not isinstance(answer, (ProviderRateLimited, ProviderUnavailable))
            results.append(answer)  # type: ignore[arg-type]
        return results

    def _failed(self, error: str) -> None:
        with transaction(self._db) as cur:
            breaker.record_failure(
                cur,
                _breaker_name(self._account_id),
                threshold=self._policy.breaker_threshold,
                cooldown_seconds=self._policy.breaker_cooldown_seconds,
            )
            provider_accounts.record_error(cur, self._account_id, error)


def adapter_of(account: provider_accounts.SyncAccount, policy: CallPolicy) -> ProviderAdapter:
    return adapter_for(
        account.provider,
        account.api_base_url,
        account.credentials,
        policy.timeout_seconds,
        policy.egress,
    )


# ---------------------------------------------------------------- sync.fetch


def run_fetch(services: Services, policy: CallPolicy, *, job_id: UUID, clinic_id: UUID) -> str:
    """Fetch the job's items from the provider and upsert them. Returns the outcome."""
    db = services.database
    with services.unit_of_work() as uow:
        job = jobs.start_attempt(uow.cur, job_id)
    if job is None or job["clinic_id"] != clinic_id:
        return "already_done"
    rid = job["request_id"]
    payload = job["payload"]
    account_id = UUID(payload["accountId"])
    account = provider_accounts.sync_account(
        db, services.cipher, account_id=account_id, clinic_id=clinic_id
    )
    if account is None or account.status == "disabled":
        with services.unit_of_work(request_id=rid) as uow:
            jobs.finish(uow.cur, job_id, status="failed", error="the provider account is gone")
        return "failed"
    items: list[dict[str, str]] = payload["items"]
    counts = dict.fromkeys(("created", "updated", "unchanged", "gone", "invalid"), 0)
    booking_counts = dict.fromkeys(("created", "updated", "unchanged", "skipped"), 0)
    skipped: list[dict[str, str]] = []
    caller = ProviderCaller(db, account_id, policy)
    caller.admit()
    adapter = adapter_of(account, policy)
    group_size = max(_FETCH_GROUP, _GROUP_PER_WORKER * policy.concurrency)
    with ThreadPoolExecutor(
        max_workers=policy.concurrency, thread_name_prefix="provider-fetch"
    ) as threads:
        pool = threads if policy.concurrency > 1 else None

        def start_group(start: int) -> Callable[[], list[Any]]:
            calls: list[Callable[[], ProviderLead | ProviderBooking]] = [
                partial(
                    adapter.fetch_lead if item["resource"] == "lead" else adapter.fetch_booking,
                    item["externalId"],
                )
                for item in items[start : start + group_size]
            ]
            return caller.start_many(calls, pool)

        starts = range(0, len(items), group_size)
        in_flight = start_group(0) if items else None
        for start in starts:
            group = items[start : start + group_size]
            fetched: list[ExternalLead] = []
            bookings: list[ExternalBooking] = []
            assert in_flight is not None
            answers = in_flight()
            # The next group's calls go out while this one is written.
            following = start + group_size
            in_flight = start_group(following) if following < len(items) else None
            for answer in answers:
                if isinstance(answer, ProviderNotFound):
                    counts["gone"] += 1
                    continue
                if isinstance(answer, ProviderRejected):
                    with services.unit_of_work(request_id=rid) as uow:
                        provider_accounts.record_error(uow.cur, account_id, str(answer))
                        jobs.finish(uow.cur, job_id, status="failed", error=str(answer))
                    return "failed"
                if isinstance(answer, ProviderBooking):
                    booking = _external_booking(answer)
                    if isinstance(booking, str):  # the provider's data breaks our rules
                        booking_counts["skipped"] += 1
                        _note_skipped(skipped, answer.external_id, booking)
                    else:
                        bookings.append(booking)
                    continue
                external = _external(answer)
                if external is None:
                    counts["invalid"] += 1  # the provider's data breaks our rules: skip it
                    continue
                fetched.append(external)
            with services.unit_of_work(request_id=rid) as uow:
                outcome = upsert_leads(
                    uow,
                    services.cipher,
                    services.blind_index,
                    clinic_id=clinic_id,
                    provider=account.provider,
                    source=account.provider,
                    items=fetched,
                )
                for state in outcome.values():
                    counts[state] += 1
                booked, reasons = upsert_bookings(
                    uow,
                    services.cipher,
                    services.blind_index,
                    clinic_id=clinic_id,
                    provider=account.provider,
                    items=bookings,
                )
                for state in booked.values():
                    booking_counts[state] += 1
                for external_id, reason in reasons.items():
                    _note_skipped(skipped, external_id, reason)
                finished = min(len(items), start + len(group))
                jobs.set_progress(
                    uow.cur,
                    job_id,
                    percent=int(100 * finished / max(1, len(items))),
                    message=f"{finished}/{len(items)} fetched",
                )
    result = {
        **counts,
        "bookings": booking_counts,
        "skippedBookings": skipped,
        "retries": caller.retries,
    }
    with services.unit_of_work(request_id=rid) as uow:
        jobs.finish(uow.cur, job_id, status="succeeded", result=result)
    return "succeeded"


_MAX_SKIPPED_LISTED = 100  # the job result stays small; the count is in bookings.skipped


def _note_skipped(skipped: list[dict[str, str]], external_id: str, reason: str) -> None:
    logger.warning("provider booking skipped", extra={"reason": reason})
    if len(skipped) < _MAX_SKIPPED_LISTED:
        skipped.append({"externalId": external_id, "reason": reason})


_BOOKING_STATUS: dict[str, Literal["booked", "cancelled"]] = {
    "booked": "booked",
    "confirmed": "booked",
    "cancelled": "cancelled",
    "canceled": "cancelled",
}
_MAX_BOOKING = timedelta(hours=24)


def _external_booking(booking: ProviderBooking) -> ExternalBooking | str:
    """The checked booking, or why it is refused (never the values)."""
    status = _BOOKING_STATUS.get(booking.status.strip().lower())
    if status is None:
        return "status: not booked or cancelled"
    starts, ends = booking.starts_at, booking.ends_at
    if starts.tzinfo is None or ends.tzinfo is None:
        return "startsAt/endsAt: a UTC offset is required"
    if not timedelta(0) < ends - starts <= _MAX_BOOKING:
        return "endsAt: must be after startsAt, at most 24 hours"
    checked = check_external(booking.name, booking.email, booking.phone, None, False)
    if isinstance(checked, str):
        return f"patient {checked}"
    name, email, phone, _, _ = checked
    return ExternalBooking(
        booking.external_id,
        booking.doctor_external_id,
        starts,
        ends,
        status,
        name,
        email,
        phone,
        booking.updated_at,
    )


def _external(lead: ProviderLead) -> ExternalLead | None:
    checked = check_external(lead.name, lead.email, lead.phone, lead.notes, lead.consent)
    if isinstance(checked, str):
        logger.warning("provider lead skipped", extra={"reason": checked})
        return None
    name, email, phone, notes, consent = checked
    return ExternalLead(lead.external_id, name, email, phone, notes, consent, lead.updated_at)


# ---------------------------------------------------------------- sync.validate


def run_validate(services: Services, policy: CallPolicy, *, job_id: UUID, clinic_id: UUID) -> str:
    """Check saved credentials against the provider; the account's status shows the answer."""
    db = services.database
    with services.unit_of_work() as uow:
        job = jobs.start_attempt(uow.cur, job_id)
    if job is None or job["clinic_id"] != clinic_id:
        return "already_done"
    rid = job["request_id"]
    account_id = UUID(job["payload"]["accountId"])
    account = provider_accounts.sync_account(
        db, services.cipher, account_id=account_id, clinic_id=clinic_id
    )
    if account is None:
        with services.unit_of_work(request_id=rid) as uow:
            jobs.finish(uow.cur, job_id, status="failed", error="the provider account is gone")
        return "failed"
    caller = ProviderCaller(db, account_id, policy)
    try:
        caller.call(adapter_of(account, policy).validate)
    except ProviderError as exc:  # rejected (unavailable/rate limited became transient)
        with services.unit_of_work(request_id=rid) as uow:
            provider_accounts.set_status(uow.cur, account_id, "invalid", str(exc))
            jobs.finish(uow.cur, job_id, status="failed", error=str(exc))
        return "failed"
    with services.unit_of_work(request_id=rid) as uow:
        provider_accounts.set_status(uow.cur, account_id, "active", None)
        jobs.finish(uow.cur, job_id, status="succeeded", result={"status": "active"})
    return "succeeded"
