"""Least privilege in the template as CloudFormation will see it: SAM's transform (offline,
samtranslator) expands every function into its role; the roles are checked, not the SAM
shorthand."""

from __future__ import annotations

import copy
import json
from typing import Any

from local.template import load_template, references
from tests.unit.conftest import MANAGED

# Inline statements that need "*", each with why (checked by Sid).
WILDCARD_RESOURCE_SIDS = {
    # SMS to a phone number has no ARN; the statement after it denies publishing to any topic.
    "SendSmsToPhoneNumbers": "PublishToNoTopic",
}


# Resources a function's policy may name without its environment naming them (function -> why).
NAMED_ELSEWHERE = {
    # LLM_MODEL carries the model id the code sends; the ARN only scopes the permission.
    ("LlmWorker", "BedrockModelArn"): "the Bedrock model LLM_MODEL names",
}


def _roles(transformed: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Function logical id -> its role's properties."""
    resources = transformed["Resources"]
    roles = {}
    for logical_id, resource in resources.items():
        if resource["Type"] != "AWS::Lambda::Function":
            continue
        role = resource["Properties"]["Role"]["Fn::GetAtt"][0]
        roles[logical_id] = resources[role]["Properties"]
    return roles


def _statements(role: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for policy in role.get("Policies", []):
        if "Fn::If" in policy:  # a conditional policy: its true branch may apply
            policy = policy["Fn::If"][1]
        statements = policy["PolicyDocument"]["Statement"]
        for statement in statements if isinstance(statements, list) else [statements]:
            if isinstance(statement, dict) and "Fn::If" in statement:
                # a conditional statement: both branches may apply
                branches = statement["Fn::If"][1:]
                found += [b for b in branches if isinstance(b, dict) and "Effect" in b]
            else:
                found.append(statement)
    return found


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def wildcard_problems(transformed: dict[str, Any]) -> list[str]:
    problems = []
    for function, role in _roles(transformed).items():
        for arn in role.get("ManagedPolicyArns", []):
            if str(arn).rsplit("/", 1)[-1] not in MANAGED:
                problems.append(f"{function}: unexpected managed policy {arn}")
        statements = _statements(role)
        sids = {s.get("Sid") for s in statements}
        for statement in statements:
            actions = _listed(statement.get("Action", []))
            if any(a == "*" or str(a).endswith(":*") for a in actions):
                problems.append(f"{function}: wildcard action in {statement.get('Sid')}")
            resources = _listed(statement.get("Resource", []))
            if statement["Effect"] == "Allow" and "*" in resources:
                deny = WILDCARD_RESOURCE_SIDS.get(statement.get("Sid", ""))
                if deny is None or deny not in sids:
                    problems.append(f"{function}: '*' resource in {statement.get('Sid')}")
    return problems


def scope_problems(template: dict[str, Any], transformed: dict[str, Any]) -> list[str]:
    """Each function's statements name only what its environment or event sources name."""
    problems = []
    globals_env = template.get("Globals", {}).get("Function", {}).get("Environment", {})
    for function, role in _roles(transformed).items():
        own = template["Resources"][function]["Properties"]
        named = references(own.get("Environment", {})) | references(globals_env)
        named |= references(own.get("Events", {}))
        for statement in _statements(role):
            if statement["Effect"] != "Allow":
                continue
            for resource in _listed(statement.get("Resource", [])):
                extra = references(resource) - named - {"AWS::Partition", "AWS::Region"}
                extra -= {"AWS::AccountId", "AWS::URLSuffix"}
                extra -= {name for fn, name in NAMED_ELSEWHERE if fn == function}
                if extra:
                    problems.append(
                        f"{function}: {statement.get('Sid')} names {sorted(extra)}, "
                        "which its environment and events do not"
                    )
    return problems


def test_no_role_grants_wildcards_beyond_the_listed_exceptions(transformed: dict[str, Any]) -> None:
    # Given every function's role after SAM's transform
    # When actions, resources and managed policies are inspected
    problems = wildcard_problems(transformed)
    # Then no action is "*" or "service:*", "*" resources appear only for SMS (with the topic
    # Deny), and the managed policies are the three SAM attaches for logs, X-Ray and SQS
    assert problems == []
    assert len(_roles(transformed)) >= 7


def test_every_function_is_limited_to_its_own_queues_bus_key_and_secrets(
    transformed: dict[str, Any],
) -> None:
    # Given each function's environment and event sources (what it uses)
    # When the resources of its role's statements are compared with them
    problems = scope_problems(load_template(), transformed)
    # Then it names nothing it does not use
    assert problems == []


def test_the_checks_catch_a_wildcard_and_a_foreign_queue(transformed: dict[str, Any]) -> None:
    # Given a copy where NotifyWorker may do anything to the llm queue
    broken = copy.deepcopy(transformed)
    role = _roles(broken)["NotifyWorker"]
    role["Policies"][0]["PolicyDocument"]["Statement"].append(
        {"Sid": "Oops", "Effect": "Allow", "Action": "sqs:*", "Resource": "*"}
    )
    role["Policies"][0]["PolicyDocument"]["Statement"].append(
        {
            "Sid": "Foreign",
            "Effect": "Allow",
            "Action": "sqs:SendMessage",
            "Resource": {"Fn::GetAtt": ["LlmQueue", "Arn"]},
        }
    )
    # When checked / Then all three problems are named
    problems = wildcard_problems(broken) + scope_problems(load_template(), broken)
    assert "NotifyWorker: wildcard action in Oops" in problems
    assert "NotifyWorker: '*' resource in Oops" in problems
    assert any(p.startswith("NotifyWorker: Foreign names ['LlmQueue']") for p in problems)


def dead_letter_queues(template: dict[str, Any]) -> set[str]:
    """Logical ids of the queues some RedrivePolicy names as its dead-letter queue."""
    return {
        resource["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]
        for resource in template["Resources"].values()
        if resource["Type"] == "AWS::SQS::Queue" and "RedrivePolicy" in resource["Properties"]
    }


def dead_letter_rights(
    transformed: dict[str, Any], template: dict[str, Any]
) -> dict[str, set[str]]:
    """Function -> the dead-letter queues its role's statements name."""
    dlqs = dead_letter_queues(template)
    return {
        function: {
            name
            for statement in _statements(role)
            if statement["Effect"] == "Allow"
            for name in references(statement.get("Resource", [])) & dlqs
        }
        for function, role in _roles(transformed).items()
    }


def test_only_the_operators_function_may_touch_a_dead_letter_queue(
    transformed: dict[str, Any],
) -> None:
    # Given each role and the template's dead-letter queues
    rights = dead_letter_rights(transformed, load_template())
    # Then the public-facing API names none; OpsFunction, behind the operator role, all
    assert rights["ApiFunction"] == set()
    assert rights["OpsFunction"] == dead_letter_queues(load_template())
    assert {f for f, queues in rights.items() if queues} == {"OpsFunction"}


def test_the_dead_letter_check_sees_a_grant(transformed: dict[str, Any]) -> None:
    # Given a copy where the API may receive from the notifications DLQ
    broken = copy.deepcopy(transformed)
    _roles(broken)["ApiFunction"]["Policies"][0]["PolicyDocument"]["Statement"].append(
        {
            "Sid": "Oops",
            "Effect": "Allow",
            "Action": "sqs:ReceiveMessage",
            "Resource": {"Fn::GetAtt": ["NotificationsDLQ", "Arn"]},
        }
    )
    # Then the check names it
    assert dead_letter_rights(broken, load_template())["ApiFunction"] == {"NotificationsDLQ"}


def test_the_transformed_template_is_json(transformed: dict[str, Any]) -> None:
    assert json.loads(json.dumps(transformed))["Resources"]
