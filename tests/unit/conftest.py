"""SAM's transform of template.yaml, offline (samtranslator), once per session: what
CloudFormation would be given. test_iam_transformed.py checks its roles,
test_production_transformed.py its network, database and connection budget."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from local.template import load_template

# Managed policies SAM attaches by itself, each for a reason (name -> why).
MANAGED = {
    "AWSLambdaBasicExecutionRole": "CloudWatch Logs for the function's own log group",
    "AWSXrayWriteOnlyAccess": "Tracing: Active; X-Ray's PutTraceSegments has no resource ARNs",
    # The event source mapping polls with the function's role; SAM attaches this AWS-managed
    # policy (sqs:ReceiveMessage/DeleteMessage/GetQueueAttributes on "*") for SQS events and
    # the template cannot narrow it without giving up SAM's SQS event type.
    "AWSLambdaSQSQueueExecutionRole": "SQS event sources (the Lambda poller)",
    # VpcConfig: Lambda creates and deletes the function's network interfaces in the
    # private subnets; EC2's interface actions take no resource ARNs.
    "AWSLambdaVPCAccessExecutionRole": "VpcConfig (network interfaces in the private subnets)",
}


class _PolicyLoader:
    """samtranslator asks IAM for managed policy ARNs; offline, it gets the ones above."""

    def load(self) -> dict[str, str]:
        return {name: f"arn:aws:iam::aws:policy/{name}" for name in MANAGED}


@pytest.fixture(scope="session")
def transformed() -> dict[str, Any]:
    from samtranslator.translator.transform import transform

    template = copy.deepcopy(load_template())
    for resource in template["Resources"].values():
        properties = resource.get("Properties", {})
        for key in ("CodeUri", "ContentUri"):
            if key in properties:  # what `sam package` does: code in S3
                properties[key] = "s3://frontdesk-artifacts/code.zip"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        result: dict[str, Any] = transform(template, {}, _PolicyLoader())
    return result
