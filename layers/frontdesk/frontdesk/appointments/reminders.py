"""Appointment reminders: the schedule (every 5 minutes) enqueues one reminder per
appointment, window and slot, however often or concurrently it runs.

A reminder is a row in `appointment_reminders` (unique per appointment, window and slot)
inserted with ON CONFLICT DO NOTHING in the same transaction as its queue message in the
outbox: a repeated or overlapping run finds the rows there (a concurrent one waits on the
unique index, then inserts nothing) and enqueues nothing twice. Only booked appointments
qualify, so cancelled ones get none; NotifyWorker checks again when it sends.
"""

from __future__ import annotations

from frontdesk.platform.queues import Queue, ReminderMessage
from frontdesk.platform.unit_of_work import UnitOfWork

# A window is entered `lead_time` before the start. A window entered before the slot was
# chosen (a booking made 3 hours ahead is already inside the 24 h window) gets no reminder:
# the confirmation was just sent. The 24 h reminder is skipped once the 2 h window has begun.
_DUE = """
    INSERT INTO appointment_reminders (id, clinic_id, appointment_id, reminder_window, starts_at)
    SELECT gen_random_uuid(), a.clinic_id, a.id, w.name, a.starts_at
    FROM appointments a
    JOIN (VALUES ('24h', interval '24 hours', interval '2 hours'),
                 ('2h', interval '2 hours', interval '0 hours'))
         AS w(name, lead_time, next_window)
      ON a.starts_at <= now() + w.lead_time
     AND a.starts_at > now() + w.next_window
     AND a.scheduled_at <= a.starts_at - w.lead_time
    WHERE a.status = 'booked' AND a.starts_at > now()
      AND NOT EXISTS (
          SELECT 1 FROM appointment_reminders r
          WHERE r.appointment_id = a.id AND r.reminder_window = w.name
            AND r.starts_at = a.starts_at)
    ORDER BY a.starts_at
    LIMIT %(limit)s
    ON CONFLICT (appointment_id, reminder_window, starts_at) DO NOTHING
    RETURNING id, clinic_id"""


def enqueue_due(uow: UnitOfWork, limit: int = 5000) -> int:
    """Enqueue the reminders that are due now, in `uow`; the number enqueued."""
    uow.cur.execute(_DUE, {"limit": limit})
    due = uow.cur.fetchall()
    uow.send(
        Queue.NOTIFICATIONS,
        [ReminderMessage(reminder_id=r["id"], clinic_id=r["clinic_id"]).body() for r in due],
    )
    return len(due)
