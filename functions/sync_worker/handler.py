"""SyncWorker: SQS sync queue -> provider fetches, credential checks, CSV imports."""

from frontdesk.workers import sync

handler = sync.make_handler()
