"""WebhookWorker: SQS webhooks queue -> events fanned out to the clinic's endpoints, and each
delivery posted, signed (frontdesk.webhooks.delivery)."""

from frontdesk.workers import webhooks

handler = webhooks.make_handler()
