"""Lambda's SQS event source mapping, for the local runtime and the tests.

Receives up to the batch size, hands the function the event Lambda would build, deletes
the records that succeeded and leaves the failed ones on the queue: they come back after
the visibility timeout, and the queue's redrive policy moves them to the DLQ after
maxReceiveCount receives, exactly as in AWS. If the handler raises, the whole batch
fails, as in AWS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_RECORD_ATTRIBUTES = (
    "ApproximateReceiveCount",
    "SentTimestamp",
    "SenderId",
    "ApproximateFirstReceiveTimestamp",
    "MessageGroupId",
    "MessageDeduplicationId",
    "SequenceNumber",
    "AWSTraceHeader",
)


@dataclass(frozen=True)
class PollResult:
    received: int
    failed: int
    error: str | None = None


def lambda_record(message: dict[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """One SQS message as it appears in a Lambda event's Records."""
    attributes = message.get("Attributes", {})
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": {k: attributes[k] for k in _RECORD_ATTRIBUTES if k in attributes},
        "messageAttributes": {
            name: {
                "stringValue": value.get("StringValue"),
                "binaryValue": value.get("BinaryValue"),
                "stringListValues": value.get("StringListValues", []),
                "binaryListValues": value.get("BinaryListValues", []),
                "dataType": value["DataType"],
            }
            for name, value in message.get("MessageAttributes", {}).items()
        },
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


def failed_ids(response: Any, records: list[dict[str, Any]], partial: bool) -> set[str]:
    """The records Lambda would return to the queue for this handler response."""
    every = {record["messageId"] for record in records}
    if not partial:
        return set()
    if response is None:
        return set()
    if not isinstance(response, dict):
        return every
    failures = response.get("batchItemFailures") or []
    ids = set()
    for failure in failures:
        item = failure.get("itemIdentifier") if isinstance(failure, dict) else None
        if not item or item not in every:
            return every  # an invalid answer fails the whole batch, as Lambda does
        ids.add(item)
    return ids


def poll_once(
    sqs: Any,
    *,
    queue_url: str,
    queue_arn: str,
    region: str,
    batch_size: int,
    partial_batch_response: bool,
    invoke: Callable[[dict[str, Any]], Any],
    wait_seconds: int = 1,
    retry_after_seconds: int | None = None,
) -> PollResult:
    """Receive one batch, invoke, delete the successes.

    `retry_after_seconds` shortens the wait before failed records reappear (tests);
    None keeps the queue's visibility timeout, as in AWS.
    """
    answer = sqs.receive_message(
        QueueUrl=queue_url,
        MaxNumberOfMessages=min(batch_size, 10),
        WaitTimeSeconds=wait_seconds,
        AttributeNames=["All"],
        MessageAttributeNames=["All"],
    )
    messages = answer.get("Messages", [])
    if not messages:
        return PollResult(0, 0)
    records = [lambda_record(m, queue_arn, region) for m in messages]
    error = None
    try:
        response = invoke({"Records": records})
        failed = failed_ids(response, records, partial_batch_response)
    except Exception as exc:  # the function failed: every record returns to the queue
        error = type(exc).__name__
        failed = {record["messageId"] for record in records}
    done = [r for r in records if r["messageId"] not in failed]
    for start in range(0, len(done), 10):
        sqs.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": r["receiptHandle"]}
                for i, r in enumerate(done[start : start + 10])
            ],
        )
    if failed and retry_after_seconds is not None:
        retry = [r for r in records if r["messageId"] in failed]
        sqs.change_message_visibility_batch(
            QueueUrl=queue_url,
            Entries=[
                {
                    "Id": str(i),
                    "ReceiptHandle": r["receiptHandle"],
                    "VisibilityTimeout": retry_after_seconds,
                }
                for i, r in enumerate(retry)
            ],
        )
    return PollResult(len(records), len(failed), error)
