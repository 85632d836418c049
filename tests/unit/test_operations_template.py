"""Operations in template.yaml: dead-letter queues wired to the API, alarms, the dashboard."""

from __future__ import annotations

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
