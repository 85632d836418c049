"""ProviderPoller: every 15 minutes, enqueue the provider changes webhooks missed."""

from frontdesk.workers import poller

handler = poller.make_handler()
