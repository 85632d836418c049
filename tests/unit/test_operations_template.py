"""Operations in template.yaml: dead-letter queues wired to the API, alarms, the dashboard."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from local.template import load_template


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


def _environments(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        logical_id: resource["Properties"].get("Environment", {}).get("Variables", {})
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function"
    }


def test_every_dead_letter_url_names_the_dlq_of_its_source_queue(template: dict[str, Any]) -> None:
    # Given every function's environment
    resources = template["Resources"]
    pairs = []
    # When each <name>_DLQ_URL is matched with <name>_QUEUE_URL
    for environment in _environments(template).values():
        for variable, value in environment.items():
            if not variable.endswith("_DLQ_URL"):
                continue
            source = environment[variable.removesuffix("_DLQ_URL") + "_QUEUE_URL"]["Ref"]
            redrive = resources[source]["Properties"]["RedrivePolicy"]
            pairs.append((redrive["deadLetterTargetArn"], {"Fn::GetAtt": [value["Ref"], "Arn"]}))
    # Then the DLQ is the one the source queue's RedrivePolicy names (replay goes back there)
    assert pairs, "expected the API to know the dead-letter queues"
    assert all(target == expected for target, expected in pairs)


def _alarms(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        logical_id: resource["Properties"]
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == "AWS::CloudWatch::Alarm"
    }


def _watched(alarm: dict[str, Any]) -> set[tuple[str, str, str]]:
    """(namespace, metric, resource logical id) of every metric an alarm reads."""
    stats = [(alarm.get("Namespace"), alarm.get("MetricName"), alarm.get("Dimensions", []))]
    for query in alarm.get("Metrics", []):
        metric = query.get("MetricStat", {}).get("Metric", {})
        stats.append((metric.get("Namespace"), metric.get("MetricName"), metric.get("Dimensions")))
    watched = set()
    for namespace, metric, dimensions in stats:
        for dimension in dimensions or []:
            value = dimension["Value"]
            if not isinstance(value, dict):
                continue  # a fixed dimension (service=frontdesk), not a resource
            target = value.get("Ref") or value.get("Fn::GetAtt", [None])[0]
            watched.add((str(namespace), str(metric), str(target)))
    return watched


def alarm_problems(template: dict[str, Any]) -> list[str]:
    """What an operator would not be told: the alarm each queue, function and API needs."""
    resources = template["Resources"]
    watched = set().union(*(_watched(alarm) for alarm in _alarms(template).values()))
    needed = set()
    for logical_id, resource in resources.items():
        kind, properties = resource["Type"], resource.get("Properties", {})
        if kind == "AWS::SQS::Queue" and "RedrivePolicy" in properties:
            needed.add(("AWS/SQS", "ApproximateAgeOfOldestMessage", logical_id))
            dlq = properties["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]
            needed.add(("AWS/SQS", "ApproximateNumberOfMessagesVisible", dlq))
        elif kind == "AWS::Serverless::Function":
            needed.add(("AWS/Lambda", "Errors", logical_id))
            needed.add(("AWS/Lambda", "Throttles", logical_id))
        elif kind == "AWS::Serverless::HttpApi":
            needed.add(("AWS/ApiGateway", "5xx", logical_id))
    return [f"no alarm on {metric} of {target}" for _, metric, target in sorted(needed - watched)]


def dashboard_problems(template: dict[str, Any]) -> list[str]:
    dashboards = [
        resource["Properties"]["DashboardBody"]
        for resource in template["Resources"].values()
        if resource["Type"] == "AWS::CloudWatch::Dashboard"
    ]
    if len(dashboards) != 1:
        return [f"expected one dashboard, found {len(dashboards)}"]
    body = dashboards[0]
    text = body["Fn::Sub"] if isinstance(body, dict) else body
    json.loads(re.sub(r"\$\{[^}]+\}", "x", text))  # valid JSON once substituted
    return [
        f"{alarm} is not on the dashboard"
        for alarm in _alarms(template)
        if f"${{{alarm}.Arn}}" not in text
    ]


def test_every_queue_function_and_the_api_have_their_alarms(template: dict[str, Any]) -> None:
    # Given the template
    # When the alarms are matched with the queues, DLQs, functions and the HTTP API
    problems = alarm_problems(template)
    # Then each source queue's age, each DLQ's depth, each function's errors and throttles
    # and the API's 5xx are watched
    assert problems == []


def test_the_dashboard_shows_every_alarm(template: dict[str, Any]) -> None:
    assert dashboard_problems(template) == []


def test_the_checks_catch_a_function_without_alarms(template: dict[str, Any]) -> None:
    # Given a copy of the template with one more function and no alarm for it
    broken = copy.deepcopy(template)
    broken["Resources"]["NewWorker"] = {"Type": "AWS::Serverless::Function", "Properties": {}}
    del broken["Resources"]["LlmQueueAgeAlarm"]
    # When checked
    problems = alarm_problems(broken) + dashboard_problems(broken)
    # Then both gaps are named
    assert "no alarm on Errors of NewWorker" in problems
    assert "no alarm on Throttles of NewWorker" in problems
    assert "no alarm on ApproximateAgeOfOldestMessage of LlmQueue" in problems
