"""MetricsFunction: every 5 minutes the recent days, nightly ({"mode": "full"}) the last 35."""

from frontdesk.workers import dashboard

handler = dashboard.make_handler()
