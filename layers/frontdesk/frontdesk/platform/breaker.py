"""A circuit breaker whose state lives in PostgreSQL, so every container shares it.

closed: calls go through; each transient failure counts, a success resets the count.
open: after `threshold` consecutive transient failures nobody calls for `cooldown` seconds;
callers are told how long to wait. half_open: after the cool-down the first caller takes a
probe lease and calls; its success closes the breaker, its failure opens it again; other
callers wait until the probe is over (or its lease expires, if the prober died).

Each function runs inside the caller's short transaction; none of them is ever held open
across the call it guards.
"""

from __future__ import annotations

from dataclasses import dataclass

from frontdesk.platform.db import Cursor


@dataclass(frozen=True)
class Admission:
    allowed: bool
    wait_seconds: float = 0.0
    probe: bool = False


def admit(cur: Cursor, name: str, *, probe_lease_seconds: float) -> Admission:
    """May the caller call `name` now? Takes the probe lease when the cool-down is over."""
    cur.execute(
        """SELECT state,
                  greatest(0, extract(epoch FROM opened_until - now()))::float8 AS cooling_for,
                  greatest(0, extract(epoch FROM probe_until - now()))::float8 AS probing_for
           FROM circuit_breakers WHERE name = %(name)s""",
        {"name": name},
    )
    row = cur.fetchone()
    if row is None or row["state"] == "closed":
        return Admission(True)
    if row["state"] == "open" and row["cooling_for"] > 0:
        return Admission(False, wait_seconds=row["cooling_for"])
    cur.execute(
        """UPDATE circuit_breakers
           SET state = 'half_open', probe_until = now() + make_interval(secs => %(lease)s),
               updated_at = now()
           WHERE name = %(name)s
             AND ((state = 'open' AND opened_until <= now())
                  OR (state = 'half_open' AND (probe_until IS NULL OR probe_until <= now())))
           RETURNING name""",
        {"name": name, "lease": probe_lease_seconds},
    )
    if cur.fetchone() is not None:
        return Admission(True, probe=True)
    return Admission(False, wait_seconds=row["probing_for"] or probe_lease_seconds)


def record_failure(cur: Cursor, name: str, *, threshold: int, cooldown_seconds: float) -> str:
    """Count a transient failure; open the breaker at the threshold or after a failed probe.
    Returns the state afterwards."""
    cur.execute(
        """INSERT INTO circuit_breakers AS b (name, state, failures, opened_until)
           VALUES (%(name)s,
                   CASE WHEN %(threshold)s <= 1 THEN 'open' ELSE 'closed' END, 1,
                   CASE WHEN %(threshold)s <= 1
                        THEN now() + make_interval(secs => %(cooldown)s) END)
           ON CONFLICT (name) DO UPDATE SET
               failures = b.failures + 1,
               state = CASE WHEN b.state = 'half_open' OR b.failures + 1 >= %(threshold)s
                            THEN 'open' ELSE b.state END,
               opened_until = CASE WHEN b.state = 'half_open' OR b.failures + 1 >= %(threshold)s
                                   THEN now() + make_interval(secs => %(cooldown)s)
                                   ELSE b.opened_until END,
               probe_until = NULL,
               updated_at = now()
           RETURNING state""",
        {"name": name, "threshold": threshold, "cooldown": cooldown_seconds},
    )
    row = cur.fetchone()
    assert row is not None
    return str(row["state"])


def record_success(cur: Cursor, name: str) -> None:
    """The provider answered: close the breaker (writes only when something changes)."""
    cur.execute(
        """UPDATE circuit_breakers
           SET state = 'closed', failures = 0, opened_until = NULL, probe_until = NULL,
               updated_at = now()
           WHERE name = %(name)s AND (state <> 'closed' OR failures > 0)""",
        {"name": name},
    )
