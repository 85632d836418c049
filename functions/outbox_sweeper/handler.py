"""OutboxSweeper: every minute, publish the outbox rows the post-commit relay missed."""

from frontdesk.workers import sweeper

handler = sweeper.make_handler()
