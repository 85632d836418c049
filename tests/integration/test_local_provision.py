"""Provisioning template.yaml into moto (in-process `mock_aws`): what the local stack gets.

No database needed. Each test runs in its own moto state.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import pytest
from moto import mock_aws

from local.template import Provisioned, load_template, provision

REGION = "us-east-1"


def new_session() -> boto3.session.Session:
    return boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    )


@pytest.fixture
def session() -> Iterator[boto3.session.Session]:
    with mock_aws():
        yield new_session()


@pytest.fixture
def stack(session: boto3.session.Session) -> Provisioned:
    return provision(load_template(), session, endpoint_url=None)


def test_notifications_queue_dead_letters_to_its_dlq(
    session: boto3.session.Session, stack: Provisioned
) -> None:
    # Given the provisioned template
    sqs = session.client("sqs")
    queue = stack.physical["NotificationsQueue"]
    dlq = stack.physical["NotificationsDLQ"]
    # When the queue's attributes are read
    attributes = sqs.get_queue_attributes(QueueUrl=queue["QueueUrl"], AttributeNames=["All"])[
        "Attributes"
    ]
    # Then its redrive policy points at the DLQ's ARN after 5 receives
    redrive = json.loads(attributes["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == dlq["Arn"]
    assert int(redrive["maxReceiveCount"]) == 5
    assert attributes["VisibilityTimeout"] == "181"
    dlq_attributes = sqs.get_queue_attributes(
        QueueUrl=dlq["QueueUrl"], AttributeNames=["MessageRetentionPeriod"]
    )["Attributes"]
    assert dlq_attributes["MessageRetentionPeriod"] == "1209600"


def test_a_message_received_max_receive_count_times_moves_to_the_dlq(
    session: boto3.session.Session, stack: Provisioned
) -> None:
    # Given a message on the notifications queue that every consumer fails
    sqs = session.client("sqs")
    queue_url = stack.physical["NotificationsQueue"]["QueueUrl"]
    dlq_url = stack.physical["NotificationsDLQ"]["QueueUrl"]
    sqs.send_message(QueueUrl=queue_url, MessageBody='{"poison": true}')
    # When it is received 5 times and made visible again each time (a failed batch item)
    for _ in range(5):
        (message,) = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=1)["Messages"]
        sqs.change_message_visibility(
            QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
        )
    # Then the next receive finds nothing and the DLQ holds the message
    assert sqs.receive_message(QueueUrl=queue_url).get("Messages", []) == []
    dead = sqs.receive_message(QueueUrl=dlq_url).get("Messages", [])
    assert [m["Body"] for m in dead] == ['{"poison": true}']


def test_event_bus_exists(session: boto3.session.Session, stack: Provisioned) -> None:
    # Given the provisioned template / When the bus is described
    bus = session.client("events").describe_event_bus(Name="frontdesk-dev")
    # Then it is the template's bus, and functions are told its name
    assert bus["Arn"] == stack.physical["EventBus"]["Arn"]
    assert stack.function_environment("ApiFunction")["EVENT_BUS_NAME"] == "frontdesk-dev"


def test_pii_key_makes_data_keys_and_has_its_alias(
    session: boto3.session.Session, stack: Provisioned
) -> None:
    # Given the provisioned template
    kms = session.client("kms")
    key_arn = stack.function_environment("ApiFunction")["KMS_KEY_ID"]
    # When a data key is generated under the key the API is told to use
    data_key = kms.generate_data_key(KeyId=key_arn, KeySpec="AES_256")
    # Then it decrypts back, rotation is on, and the alias finds the same key
    assert (
        kms.decrypt(CiphertextBlob=data_key["CiphertextBlob"])["Plaintext"]
        == (data_key["Plaintext"])
    )
    assert kms.get_key_rotation_status(KeyId=key_arn)["KeyRotationEnabled"] is True
    aliased = kms.describe_key(KeyId="alias/frontdesk-dev-pii")["KeyMetadata"]
    assert aliased["Arn"] == key_arn


def test_blind_index_secret_is_generated(
    session: boto3.session.Session, stack: Provisioned
) -> None:
    # Given the provisioned template / When the secret the API is told about is read
    arn = stack.function_environment("ApiFunction")["BLIND_INDEX_SECRET_ARN"]
    value = session.client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"]
    # Then it has the template's length and no punctuation
    assert len(value) == 64 and value.isalnum()


def test_ses_sender_is_verified(session: boto3.session.Session, stack: Provisioned) -> None:
    # Given the provisioned template / When SES identities are listed
    ses = session.client("ses")
    sender = stack.function_environment("NotifyWorker")["SENDER_EMAIL"]
    attributes = ses.get_identity_verification_attributes(Identities=[sender])
    # Then the worker's sender can send
    assert attributes["VerificationAttributes"][sender]["VerificationStatus"] == "Success"


def test_provisioning_twice_reuses_everything(
    session: boto3.session.Session, stack: Provisioned
) -> None:
    # Given a provisioned template and a message waiting on its queue
    sqs = session.client("sqs")
    sqs.send_message(QueueUrl=stack.physical["NotificationsQueue"]["QueueUrl"], MessageBody="x")
    secret_arn = stack.physical["BlindIndexSecret"]["Ref"]
    secret = session.client("secretsmanager").get_secret_value(SecretId=secret_arn)
    # When it is provisioned again
    again = provision(load_template(), session, endpoint_url=None)
    # Then the same resources are found, nothing is duplicated and nothing is lost
    assert again.physical == stack.physical
    assert len(sqs.list_queues()["QueueUrls"]) == len(stack.resources("AWS::SQS::Queue"))
    assert len(session.client("kms").list_keys()["Keys"]) == 1
    assert (
        session.client("secretsmanager").get_secret_value(SecretId=secret_arn)["SecretString"]
        == (secret["SecretString"])
    )
    attributes = sqs.get_queue_attributes(
        QueueUrl=again.physical["NotificationsQueue"]["QueueUrl"],
        AttributeNames=["ApproximateNumberOfMessages"],
    )["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "1"


def test_provisioning_against_a_moto_server_is_idempotent_across_runs(moto_url: str) -> None:
    # Given the session's moto server, freshly reset, as the local runtime would use it
    httpx.post(f"{moto_url}/moto-api/reset", timeout=5).raise_for_status()
    # When two runs, each with its own session, provision the template through its URL
    first = provision(load_template(), new_session(), moto_url)
    second = provision(load_template(), new_session(), moto_url)
    # Then the second finds what the first created
    assert second.physical == first.physical
    assert first.physical["NotificationsQueue"]["QueueUrl"].startswith(moto_url)
    queues = new_session().client("sqs", endpoint_url=moto_url).list_queues()["QueueUrls"]
    assert len(queues) == len(first.resources("AWS::SQS::Queue"))


def test_sqs_event_sources_point_at_the_provisioned_queue(stack: Provisioned) -> None:
    # Given the provisioned template / When the SQS event sources are listed
    sources = stack.sqs_event_sources()
    assert len(sources) == 5
    # Then each worker polls its real queue URL
    for source in sources:
        queue = stack.physical[source.queue_logical_id]
        assert (source.queue_url, source.queue_arn) == (queue["QueueUrl"], queue["Arn"])
    assert {s.queue_logical_id for s in sources} == {
        "NotificationsQueue",
        "LlmQueue",
        "SyncQueue",
        "PushQueue",
        "WebhooksQueue",
    }


RULE_TEMPLATE: dict[str, Any] = {
    "Parameters": {"Environment": {"Type": "String", "Default": "dev"}},
    "Resources": {
        "Bus": {
            "Type": "AWS::Events::EventBus",
            "Properties": {"Name": {"Fn::Sub": "bus-${Environment}"}},
        },
        "Target": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": "target"}},
        "LeadCreated": {
            "Type": "AWS::Events::Rule",
            "Properties": {
                "EventBusName": {"Ref": "Bus"},
                "EventPattern": {"source": ["frontdesk"], "detail-type": ["lead.created"]},
                "Targets": [
                    {"Id": "queue", "Arn": {"Fn::GetAtt": ["Target", "Arn"]}},
                    {"Id": "function", "Arn": {"Fn::GetAtt": ["SomeFunction", "Arn"]}},
                ],
            },
        },
        "Nightly": {
            "Type": "AWS::Events::Rule",
            "Properties": {"ScheduleExpression": "cron(0 2 * * ? *)"},
        },
        "SomeFunction": {"Type": "AWS::Serverless::Function", "Properties": {}},
    },
}


def test_event_rules_route_matching_events_to_their_queue(
    session: boto3.session.Session,
) -> None:
    # Given a template whose rule routes lead.created events to a queue
    stack = provision(RULE_TEMPLATE, session, endpoint_url=None)
    events, sqs = session.client("events"), session.client("sqs")
    # When a matching and a non-matching event are put on the bus
    bus = stack.physical["Bus"]["Name"]
    for detail_type in ("lead.created", "lead.deleted"):
        events.put_events(
            Entries=[
                {
                    "Source": "frontdesk",
                    "DetailType": detail_type,
                    "Detail": "{}",
                    "EventBusName": bus,
                }
            ]
        )
    # Then only the matching one reaches the queue; the schedule rule is left to the runtime
    received = sqs.receive_message(
        QueueUrl=stack.physical["Target"]["QueueUrl"], MaxNumberOfMessages=10
    )["Messages"]
    assert [json.loads(m["Body"])["detail-type"] for m in received] == ["lead.created"]
    assert "Nightly" not in stack.physical
    targets = events.list_targets_by_rule(
        Rule=stack.physical["LeadCreated"]["Ref"], EventBusName=bus
    )
    assert [t["Id"] for t in targets["Targets"]] == ["queue"]
