"""Jobs left behind: a job whose message is gone (a queue purged, a message lost or dropped
by a broken worker) stays queued or running forever unless something notices. Housekeeping
does, every few minutes (as River's rescuer and pg-boss's expiration do for their jobs):

- a job is overdue when no worker has touched it for JOB_RESCUE_AFTER_SECONDS (every worker
  moves `updated_at` when it takes the job's message, records an error, makes progress, or
  lets the message wait for the circuit breaker) and no unsent outbox row holds its message
  (that one the OutboxSweeper sends);
- an overdue job is rescued: its message is sent again through the outbox, in the same
  transaction that counts the rescue and starts its deadline anew (`UnitOfWork.send_job`).
  A message that was only slow, not lost, now exists twice; every consumer is idempotent,
  so the job still happens once;
- after JOB_MAX_RESCUES rescues it is given up: `dead`, with the reason (an assistant
  reply reads failed), and counted for operators (GET /ops/jobs/stuck).

The overdue jobs are locked with SKIP LOCKED, so two runs at once rescue each job once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from uuid import UUID

from frontdesk.assistant import replies
from frontdesk.config import Settings
from frontdesk.platform import jobs
from frontdesk.platform.db import Database, transaction
from frontdesk.platform.queues import JobKind
from frontdesk.platform.unit_of_work import UnitOfWork
from frontdesk.values import ApiModel, Timestamp

GIVEN_UP = "given up by Housekeeping"
_BATCH = 500


@dataclass(frozen=True)
class RescuePolicy:
    after_seconds: int
    max_rescues: int

    @classmethod
    def from_settings(cls, settings: Settings) -> RescuePolicy:
        return cls(settings.job_rescue_after_seconds, settings.job_max_rescues)


@dataclass
class Rescued:
    rescued: list[UUID] = field(default_factory=list)
    given_up: list[UUID] = field(default_factory=list)


def rescue(uow: UnitOfWork, policy: RescuePolicy, *, limit: int = _BATCH) -> Rescued:
    """Send again the messages of overdue jobs, or give up on those rescued enough, in `uow`."""
    cur = uow.cur
    outcome = Rescued()
    reasons: dict[UUID, str] = {}
    for job in jobs.overdue(cur, older_than_seconds=policy.after_seconds, limit=limit):
        try:
            kind = JobKind(job["kind"])
        except ValueError:
            reasons[job["id"]] = f"{GIVEN_UP}: no worker handles jobs of kind {job['kind']!r}"
            continue
        if job["rescues"] >= policy.max_rescues:
            reasons[job["id"]] = (
                f"{GIVEN_UP}: its message was lost {job['rescues'] + 1} times (no worker"
                f" touched it for {policy.after_seconds} s, {job['rescues']} times sent again)"
            )
            continue
        uow.send_job(kind, job["id"], job["clinic_id"])
        outcome.rescued.append(job["id"])
    if outcome.rescued:
        jobs.mark_rescued(cur, outcome.rescued)
    if reasons:
        outcome.given_up = list(reasons)
        jobs.finish_many(cur, outcome.given_up, "dead", errors=list(reasons.values()))
        replies.fail_replies_of(cur, outcome.given_up, "the reply was given up on (its job died)")
    return outcome


class StuckKind(ApiModel):
    kind: str
    status: str
    overdue: int  # the next run rescues them (or gives up on them)
    waiting_in_outbox: int  # overdue, but their message is still in the outbox: its backlog
    rescued: int  # open and rescued at least once
    oldest_updated_at: Timestamp | None


class StuckJobs(ApiModel):
    """Open jobs past the rescue deadline or rescued before, every clinic's (operators)."""

    rescue_after_seconds: int
    max_rescues: int
    kinds: list[StuckKind]
    given_up_last_day: int


def stuck_jobs(db: Database, policy: RescuePolicy) -> StuckJobs:
    with transaction(db) as cur:
        counts = jobs.open_job_counts(cur, older_than_seconds=policy.after_seconds)
        given_up = jobs.count_failed_since(cur, error_prefix=GIVEN_UP, hours=24)
    return StuckJobs(
        rescue_after_seconds=policy.after_seconds,
        max_rescues=policy.max_rescues,
        kinds=[StuckKind.model_validate(row) for row in counts],
        given_up_last_day=given_up,
    )
