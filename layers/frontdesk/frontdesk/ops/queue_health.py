"""Queue health for operators (GET /ops/queues): depth, in-flight and DLQ depth per queue.

Read with SQS GetQueueAttributes only, one call per queue and one per DLQ. The age of the
oldest message is not among SQS's attributes (it is CloudWatch's ApproximateAgeOfOldestMessage
metric, and peeking would change what the workers see), so it is reported as null with a
note; the template's alarms watch that metric in AWS.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ConfigDict

from frontdesk.values import ApiModel

AGE_NOTE = (
    "not available from SQS's API: see CloudWatch's ApproximateAgeOfOldestMessage for this queue"
)
_ATTRIBUTES = [
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
]


def _attributes(sqs: Any, url: str) -> dict[str, int]:
    answer = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=_ATTRIBUTES)
    return {name: int(value) for name, value in answer.get("Attributes", {}).items()}


class QueueHealth(ApiModel):
    model_config = ConfigDict(frozen=False)

    name: str
    depth: int | None = None
    in_flight: int | None = None
    delayed: int | None = None
    age_of_oldest_message_seconds: float | None = None
    age_note: str = AGE_NOTE
    dlq_depth: int | None = None
    error: str | None = None


class Queues(ApiModel):
    queues: list[QueueHealth]


def queue_health(sqs: Any, queues: Mapping[str, tuple[str, str | None]]) -> Queues:
    """One entry per queue (name -> (URL, DLQ URL or None)); a queue SQS cannot answer for
    carries an error instead of its numbers."""
    from botocore.exceptions import BotoCoreError, ClientError

    report = []
    for name, (url, dlq_url) in sorted(queues.items()):
        entry = QueueHealth(name=name)
        try:
            attributes = _attributes(sqs, url)
            entry.depth = attributes.get("ApproximateNumberOfMessages")
            entry.in_flight = attributes.get("ApproximateNumberOfMessagesNotVisible")
            entry.delayed = attributes.get("ApproximateNumberOfMessagesDelayed")
            if dlq_url:
                dlq = _attributes(sqs, dlq_url)
                entry.dlq_depth = dlq.get("ApproximateNumberOfMessages")
        except ClientError as exc:
            entry.error = f"SQS refused ({exc.response.get('Error', {}).get('Code', '?')})"
        except BotoCoreError as exc:
            entry.error = f"SQS unreachable ({type(exc).__name__})"
        report.append(entry)
    return Queues(queues=report)
