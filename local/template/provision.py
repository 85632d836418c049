"""Provisioning: the template's queues, buses, rules, keys, aliases, secrets and SES
templates created in moto (in-process `mock_aws` or a moto server), idempotently."""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from botocore.exceptions import ClientError

from local.template.errors import TemplateError
from local.template.intrinsics import (
    DEFAULT_REGION,
    LOCAL_ACCOUNT_ID,
    LOCAL_STACK_NAME,
    PARTITION,
    _scalar_string,
    parameter_values,
    references,
)
from local.template.loader import REPO
from local.template.stack import Provisioned, _truthy

if TYPE_CHECKING:
    import boto3

# The parameters a local stack is provisioned with, unless told otherwise: the local runtime
# stands in for the infrastructure (its embedded PostgreSQL is the "existing" database, and
# it is its own JWT issuer), and it sends mail as a fixed local sender.
LOCAL_PARAMETERS: dict[str, Any] = {
    "Infrastructure": "existing",
    "Identity": "external",
    "JwtIssuer": "https://auth.frontdesk.local/",
    "SenderEmail": "frontdesk@example.com",
}


def local_parameters(
    template: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The template's parameters as the local runtime runs it (LOCAL_PARAMETERS, then
    `overrides`), for the parameters the template declares."""
    declared = template.get("Parameters") or {}
    chosen = {k: v for k, v in LOCAL_PARAMETERS.items() if k in declared}
    return parameter_values(template, {**chosen, **(overrides or {})})


# Tags moto keys with, so a second `provision` finds keys that have no alias to look up.
_KEY_TAG = "frontdesk:stack-resource"


class _Clients:
    def __init__(self, session: boto3.session.Session, endpoint_url: str | None, region: str):
        self._session = session
        self._endpoint_url = endpoint_url
        self._region = region
        self._clients: dict[str, Any] = {}

    def __call__(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = cast(Any, self._session).client(
                service, region_name=self._region, endpoint_url=self._endpoint_url
            )
        return self._clients[service]


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


_Creator = Callable[[Provisioned, str, dict[str, Any], _Clients], dict[str, Any] | None]

_QUEUE_ATTRIBUTES = (
    "ContentBasedDeduplication",
    "DeduplicationScope",
    "DelaySeconds",
    "FifoQueue",
    "FifoThroughputLimit",
    "KmsDataKeyReusePeriodSeconds",
    "KmsMasterKeyId",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "RedriveAllowPolicy",
    "RedrivePolicy",
    "SqsManagedSseEnabled",
    "VisibilityTimeout",
)


def _create_queue(
    stack: Provisioned, logical_id: str, properties: dict[str, Any], aws: _Clients
) -> dict[str, Any]:
    resolved = stack.resolve(properties)
    fifo = _truthy(resolved.get("FifoQueue", False))
    name = str(resolved.get("QueueName") or f"{stack.stack_name}-{logical_id}")
    if fifo and not name.endswith(".fifo"):
        name += ".fifo"
    attributes = {
        key: json.dumps(value) if isinstance(value, dict) else _scalar_string(value)
        for key, value in resolved.items()
        if key in _QUEUE_ATTRIBUTES
    }
    sqs = aws("sqs")
    try:
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    except ClientError as exc:
        if _error_code(exc) not in ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"):
            raise
        url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    else:  # reuse it, with the template's current settings
        changeable = {key: value for key, value in attributes.items() if key != "FifoQueue"}
        if changeable:
            sqs.set_queue_attributes(QueueUrl=url, Attributes=changeable)
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
    return {"Ref": url, "QueueUrl": url, "Arn": arn["QueueArn"], "QueueName": name}


def _create_event_bus(
    stack: Provisioned, logical_id: str, properties: dict[str, Any], aws: _Clients
) -> dict[str, Any]:
    name = str(stack.resolve(properties["Name"]))
    events = aws("events")
    try:
        arn = events.describe_event_bus(Name=name)["Arn"]
    except ClientError as exc:
        if _error_code(exc) != "ResourceNotFoundException":
            raise
        arn = events.create_event_bus(Name=name)["EventBusArn"]
    return {"Ref": name, "Name": name, "Arn": arn}


def _is_sqs_target(stack: Provisioned, target: Mapping[str, Any]) -> bool:
    arn = target.get("Arn")
    if isinstance(arn, dict) and set(arn) == {"Fn::GetAtt"}:
        reference = arn["Fn::GetAtt"]
        logical_id = reference.split(".", 1)[0] if isinstance(reference, str) else reference[0]
        resource = (stack.template.get("Resources") or {}).get(logical_id) or {}
        return bool(resource.get("Type") == "AWS::SQS::Queue")
    try:
        return str(stack.resolve(arn)).startswith(f"arn:{PARTITION}:sqs:")
    except TemplateError:
        return False


def _create_event_rule(
    stack: Provisioned, logical_id: str, properties: dict[str, Any], aws: _Clients
) -> dict[str, Any] | None:
    if "EventPattern" not in properties:
        return None  # a schedule rule: the local runtime fires those itself
    pattern = stack.resolve(properties["EventPattern"])
    name = str(stack.resolve(properties.get("Name") or f"{stack.stack_name}-{logical_id}"))[:64]
    bus = str(stack.resolve(properties.get("EventBusName", "default")))
    rule: dict[str, Any] = {
        "Name": name,
        "EventPattern": pattern if isinstance(pattern, str) else json.dumps(pattern),
        "EventBusName": bus,
        "State": str(stack.resolve(properties.get("State", "ENABLED"))),
    }
    if "Description" in properties:
        rule["Description"] = str(stack.resolve(properties["Description"]))
    events = aws("events")
    arn = events.put_rule(**rule)["RuleArn"]
    targets = [
        stack.resolve(target)
        for target in properties.get("Targets") or []
        if _is_sqs_target(stack, target)
    ]
    entries = [
        {key: value for key, value in target.items() if key in _RULE_TARGET_KEYS}
        for target in targets
    ]
    if entries:
        events.put_targets(Rule=name, EventBusName=bus, Targets=entries)
    return {"Ref": name, "Arn": arn}


_RULE_TARGET_KEYS = ("Id", "Arn", "Input", "InputPath", "InputTransformer", "SqsParameters")


def _create_kms_key(
    stack: Provisioned, logical_id: str, properties: dict[str, Any], aws: _Clients
) -> dict[str, Any]:
    kms = aws("kms")
    tag = f"{stack.stack_name}/{logical_id}"
    for page in kms.get_paginator("list_keys").paginate():
        for key in page["Keys"]:
            tags = kms.list_resource_tags(KeyId=key["KeyId"])["Tags"]
            if {"TagKey": _KEY_TAG, "TagValue": tag} in tags:
                metadata = kms.describe_key(KeyId=key["KeyId"])["KeyMetadata"]
                if metadata["KeyState"] == "Enabled":
                    return {
                        "Ref": metadata["KeyId"],
                        "KeyId": metadata["KeyId"],
                        "Arn": metadata["Arn"],
                    }
    resolved = stack.resolve(properties)
    request: dict[str, Any] = {
        "Description": str(resolved.get("Description", "")),
        "KeyUsage": str(resolved.get("KeyUsage", "ENCRYPT_DECRYPT")),
        "KeySpec": str(resolved.get("KeySpec", "SYMMETRIC_DEFAULT")),
        "Tags": [{"TagKey": _KEY_TAG, "TagValue": tag}],
    }
    if "KeyPolicy" in resolved:
        policy = resolved["KeyPolicy"]
        request["Policy"] = policy if isinstance(policy, str) else json.dumps(policy)
    metadata = kms.create_key(**request)["KeyMetadata"]
    if _truthy(resolved.get("EnableKeyRotation", False)):
        kms.enable_key_rotation(KeyId=metadata["KeyId"])
    return {"Ref": metadata["KeyId"], "KeyId": metadata["KeyId"], "Arn": metadata["Arn"]}


def _create_kms_alias(
    stack: Provisioned, logical_id: str, properties: dict[str, Any], aws: _Clients
) -> dict[str, Any]:
    name = str(stack.resolve(properties["AliasName"]))
    target = str(stack.resolve(properties["TargetKeyId"]))
    kms = aws("kms")
    try:
        kms.create_alias(AliasName=name, TargetKeyId=target)
    except ClientError as exc:
        if _error_code(exc) != "AlreadyExistsException":
            raise
        kms.update_alias(AliasName=name, TargetKeyId=target)
    return {"Ref": name}


def _create_secret(
    stack: Provisioned, logical_id: str, properties: dict[str, Any], aws: _Clients
) -> dict[str, Any]:
    resolved = stack.resolve(properties)
    name = str(resolved.get("Name") or f"{stack.stack_name}-{logical_id}")
    secretsmanager = aws("secretsmanager")
    try:
        arn = secretsmanager.describe_secret(SecretId=name)["ARN"]
    except ClientError as exc:
        if _error_code(exc) != "ResourceNotFoundException":
            raise
        if "SecretString" in resolved:
            value = str(resolved["SecretString"])
        else:
            value = generate_secret_string(resolved.get("GenerateSecretString") or {})
        request = {"Name": name, "SecretString": value}
        if "Description" in resolved:
            request["Description"] = str(resolved["Description"])
        arn = secretsmanager.create_secret(**request)["ARN"]
    return {"Ref": arn, "Id": arn}


def generate_secret_string(spec: Mapping[str, Any]) -> str:
    """A value as Secrets Manager's GenerateSecretString would make it."""
    length = int(spec.get("PasswordLength", 32))
    excluded = set(str(spec.get("ExcludeCharacters", "")))
    groups = [
        group
        for flag, group in (
            ("ExcludeLowercase", string.ascii_lowercase),
            ("ExcludeUppercase", string.ascii_uppercase),
            ("ExcludeNumbers", string.digits),
            ("ExcludePunctuation", string.punctuation),
        )
        if not _truthy(spec.get(flag, False))
    ]
    if _truthy(spec.get("IncludeSpace", False)):
        groups.append(" ")
    groups = ["".join(c for c in group if c not in excluded) for group in groups]
    groups = [group for group in groups if group]
    alphabet = "".join(groups)
    if not alphabet or length < 1:
        raise TemplateError(f"GenerateSecretString {dict(spec)!r} allows no characters")
    require_each = _truthy(spec.get("RequireEachIncludedType", True)) and length >= len(groups)
    while True:
        value = "".join(secrets.choice(alphabet) for _ in range(length))
        if not require_each or all(any(c in group for c in value) for group in groups):
            break
    template, key = spec.get("SecretStringTemplate"), spec.get("GenerateStringKey")
    if template and key:
        document = json.loads(str(template))
        document[str(key)] = value
        return json.dumps(document)
    return value


def _create_ses_template(
    stack: Provisioned, logical_id: str, properties: dict[str, Any], aws: _Clients
) -> dict[str, Any]:
    spec = stack.resolve(properties["Template"])
    name = str(spec.get("TemplateName") or f"{stack.stack_name}-{logical_id}")
    template = {
        "TemplateName": name,
        **{k: str(spec[k]) for k in ("SubjectPart", "TextPart", "HtmlPart") if k in spec},
    }
    ses = aws("ses")
    try:
        ses.create_template(Template=template)
    except ClientError as exc:
        if _error_code(exc) != "AlreadyExists":
            raise
        ses.update_template(Template=template)
    return {"Ref": name}


_CREATORS: dict[str, _Creator] = {
    "AWS::SQS::Queue": _create_queue,
    "AWS::Events::EventBus": _create_event_bus,
    "AWS::Events::Rule": _create_event_rule,
    "AWS::KMS::Key": _create_kms_key,
    "AWS::KMS::Alias": _create_kms_alias,
    "AWS::SecretsManager::Secret": _create_secret,
    "AWS::SES::Template": _create_ses_template,
}


def creation_order(stack: Provisioned) -> list[str]:
    """Provisionable resources, each after those it refers to (DLQs before their queues)."""
    resources = stack.resources(*_CREATORS)
    depends: dict[str, set[str]] = {}
    for logical_id, resource in resources.items():
        needs = references(resource.get("Properties") or {})
        explicit = resource.get("DependsOn") or []
        needs |= {explicit} if isinstance(explicit, str) else set(explicit)
        depends[logical_id] = {name for name in needs if name in resources and name != logical_id}
    ordered: list[str] = []
    visiting: set[str] = set()

    def visit(logical_id: str) -> None:
        if logical_id in ordered:
            return
        if logical_id in visiting:
            raise TemplateError(f"circular reference through {logical_id}")
        visiting.add(logical_id)
        for needed in sorted(depends[logical_id], key=list(resources).index):
            visit(needed)
        visiting.discard(logical_id)
        ordered.append(logical_id)

    for logical_id in resources:
        visit(logical_id)
    return ordered


def provision(
    template: dict[str, Any],
    session: boto3.session.Session,
    endpoint_url: str | None,
    parameter_overrides: dict[str, Any] | None = None,
    *,
    stack_name: str = LOCAL_STACK_NAME,
    account_id: str = LOCAL_ACCOUNT_ID,
    base_dir: Path = REPO,
) -> Provisioned:
    """Create the template's queues, buses, rules, keys, aliases and secrets, idempotently.

    Works in-process under moto's `mock_aws` (endpoint_url None) and against a moto
    server (endpoint_url its URL). Parameters: LOCAL_PARAMETERS, then the overrides.
    Running it twice reuses what exists. Schedule rules
    are not created (the local runtime fires schedules); functions, APIs, alarms and
    log groups have no local counterpart. The SES identity of the SenderEmail
    parameter, if the template has one, is verified so the worker can send.
    """
    stack = Provisioned(
        template=template,
        parameters=local_parameters(template, parameter_overrides),
        region=session.region_name or DEFAULT_REGION,
        account_id=account_id,
        stack_name=stack_name,
        base_dir=base_dir,
    )
    aws = _Clients(session, endpoint_url, stack.region)
    for logical_id in creation_order(stack):
        resource = template["Resources"][logical_id]
        creator = _CREATORS[resource["Type"]]
        attributes = creator(stack, logical_id, resource.get("Properties") or {}, aws)
        if attributes is not None:
            stack.physical[logical_id] = attributes
    sender = stack.parameters.get("SenderEmail")
    if sender:
        aws("ses").verify_email_identity(EmailAddress=str(sender))
    return stack
