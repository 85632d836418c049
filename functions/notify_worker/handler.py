"""NotifyWorker: SQS notifications queue -> one email per notification, partial batch failures."""

from frontdesk.workers import notify

handler = notify.make_handler()
