"""Reminders: every 5 minutes, enqueue each due appointment reminder exactly once."""

from frontdesk.workers import reminders

handler = reminders.make_handler()
