"""Emails and SMS: staff emails about new leads (staff.py), patients' appointment notices
(patients.py), the providers behind them (channels.py). Every send has a row in
`notification_deliveries`, its claim and its outcome."""

from __future__ import annotations

from frontdesk.platform.db import Database, transaction


def purge_ended(db: Database, *, older_than_days: int, limit: int) -> int:
    """Delete up to `limit` delivery rows that ended (sent or failed) more than
    `older_than_days` ago (Housekeeping). A row is a send's guard against sending twice and
    a count of the day's metrics, so it outlives any copy of its message (a DLQ keeps one
    14 days) and the nightly metrics window (35 days): the setting's floor is 40."""
    with transaction(db) as cur:
        cur.execute(
            """DELETE FROM notification_deliveries WHERE notification_id IN (
                   SELECT notification_id FROM notification_deliveries
                   WHERE status IN ('sent', 'failed')
                     AND updated_at < now() - make_interval(days => %(days)s)
                   LIMIT %(limit)s)""",
            {"days": older_than_days, "limit": limit},
        )
        return cur.rowcount
