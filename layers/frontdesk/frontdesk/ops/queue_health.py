"""Queue health for operators (GET /ops/queues): depth, in-flight and DLQ depth per queue.

Read with SQS GetQueueAttributes only, one call per queue and one per DLQ. The age of the
oldest message is not among SQS's attributes (it is CloudWatch's ApproximateAgeOfOldestMessage
metric, and peeking would change what the workers see), so it is reported as null with a
note; the template's alarms watch that metric in AWS.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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


def queue_health(sqs: Any, queues: Mapping[str, tuple[str, str | None]]) -> list[dict[str, Any]]:
    """One entry per queue (name -> (URL, DLQ URL or None)); a queue SQS cannot answer for
    carries an error instead of its numbers."""
    from botocore.exceptions import BotoCoreError, ClientError

    report = []
    for name, (url, dlq_url) in sorted(queues.items()):
        entry: dict[str, Any] = {
            "name": name,
            "depth": None,
            "inFlight": None,
            "delayed": None,
            "ageOfOldestMessageSeconds": None,
            "ageNote": AGE_NOTE,
            "dlqDepth": None,
            "error": None,
        }
        try:
            attributes = _attributes(sqs, url)
            entry["depth"] = attributes.get("ApproximateNumberOfMessages")
            entry["inFlight"] = attributes.get("ApproximateNumberOfMessagesNotVisible")
            entry["delayed"] = attributes.get("ApproximateNumberOfMessagesDelayed")
            if dlq_url:
                dlq = _attributes(sqs, dlq_url)
                entry["dlqDepth"] = dlq.get("ApproximateNumberOfMessages")
        except ClientError as exc:
            entry["error"] = f"SQS refused ({exc.response.get('Error', {}).get('Code', '?')})"
        except BotoCoreError as exc:
            entry["error"] = f"SQS unreachable ({type(exc).__name__})"
        report.append(entry)
    return report
