"""Housekeeping: every 5 minutes, rescue jobs whose message is lost; every hour, delete
rows past their retention."""

from frontdesk.workers import housekeeping

handler = housekeeping.make_handler()
