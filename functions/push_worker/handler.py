"""PushWorker: SQS push queue -> PostToConnection to the browsers that follow each event."""

from frontdesk.workers import push

handler = push.make_handler()
