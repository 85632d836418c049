"""Infrastructure tests: what template.yaml promises, checked without AWS (no sockets).

`sam validate --lint` and cfn-lint accept a misspelt runtime, a misspelt
FunctionResponseTypes value and a 5-field cron; these tests do not. Each check is a
function returning its problems, run on the real template and on a broken copy so the
check itself is proven to catch what it claims to.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from local.template import (
    REPO,
    Provisioned,
    TemplateError,
    load_template,
    local_parameters,
    validate_schedule_expression,
)
from local.websocket_api import websocket_apis

Template = dict[str, Any]
INTERPRETER_RUNTIME = f"python{sys.version_info.major}.{sys.version_info.minor}"
MIN_MAX_RECEIVE_COUNT = 5
VISIBILITY_TIMEOUT_FACTOR = 6


@pytest.fixture(scope="module")
def template() -> Template:
    return load_template()


def resources(template: Template, type_: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == type_}


def function_property(template: Template, function: dict[str, Any], name: str) -> Any:
    """A function's property, falling back to Globals.Function like SAM does."""
    own = function.get("Properties", {})
    return own.get(name, template.get("Globals", {}).get("Function", {}).get(name))


def events_of(template: Template, event_type: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for function_id, function in resources(template, "AWS::Serverless::Function").items():
        for event_id, event in (function["Properties"].get("Events") or {}).items():
            if event["Type"] == event_type:
                yield function_id, event_id, event.get("Properties", {})


def get_att_target(value: Any, attribute: str) -> str | None:
    """The logical id in {"Fn::GetAtt": [id, attribute]}, else None."""
    if isinstance(value, dict) and set(value) == {"Fn::GetAtt"}:
        target, got = value["Fn::GetAtt"]
        return str(target) if got == attribute else None
    return None


def budget_values(template: Template, value: Any) -> dict[str, Any]:
    """A value for each connection budget: a FindInMap into ConnectionBudget by the budget
    parameter gives each row's entry, anything else is the same for every budget."""
    budgets = template["Parameters"]["DatabaseConnectionBudget"]["AllowedValues"]
    if isinstance(value, dict) and set(value) == {"Fn::FindInMap"}:
        name, top, key = value["Fn::FindInMap"]
        if name == "ConnectionBudget" and top == {"Ref": "DatabaseConnectionBudget"}:
            return {b: template["Mappings"][name][b].get(key) for b in budgets}
    return dict.fromkeys(budgets, value)


# ---------------------------------------------------------------- checks


def sqs_problems(template: Template) -> list[str]:
    problems = []
    queues = resources(template, "AWS::SQS::Queue")
    for function_id, event_id, props in events_of(template, "SQS"):
        where = f"{function_id}/{event_id}"
        queue_id = get_att_target(props.get("Queue"), "Arn")
        if queue_id not in queues:
            problems.append(f"{where}: Queue is not !GetAtt <template queue>.Arn")
            continue
        queue = queues[queue_id].get("Properties", {})
        redrive = queue.get("RedrivePolicy") or {}
        dlq_id = get_att_target(redrive.get("deadLetterTargetArn"), "Arn")
        if dlq_id not in queues:
            problems.append(f"{where}: queue {queue_id} has no RedrivePolicy to a template DLQ")
        if int(redrive.get("maxReceiveCount", 0)) < MIN_MAX_RECEIVE_COUNT:
            problems.append(f"{where}: maxReceiveCount below {MIN_MAX_RECEIVE_COUNT}")
        timeout = int(function_property(template, template["Resources"][function_id], "Timeout"))
        visibility = int(queue.get("VisibilityTimeout", 30))
        window = int(props.get("MaximumBatchingWindowInSeconds", 0))
        if visibility < VISIBILITY_TIMEOUT_FACTOR * timeout + window:
            problems.append(
                f"{where}: VisibilityTimeout {visibility} < 6 x Timeout {timeout}"
                f" + batching window {window}"
            )
        if props.get("FunctionResponseTypes") != ["ReportBatchItemFailures"]:
            problems.append(f"{where}: FunctionResponseTypes is not [ReportBatchItemFailures]")
        concurrency = (props.get("ScalingConfig") or {}).get("MaximumConcurrency")
        for value in budget_values(template, concurrency).values():
            if not isinstance(value, int) or not 2 <= value <= 1000:
                problems.append(f"{where}: ScalingConfig.MaximumConcurrency not in 2..1000")
        variables = (template["Resources"][function_id]["Properties"].get("Environment") or {}).get(
            "Variables", {}
        )
        if str(variables.get("MAX_RECEIVE_COUNT")) != str(redrive.get("maxReceiveCount")):
            problems.append(f"{where}: MAX_RECEIVE_COUNT is not the queue's maxReceiveCount")
    return problems


def runtime_problems(template: Template) -> list[str]:
    problems = []
    runtimes = {"Globals.Function": template.get("Globals", {}).get("Function", {}).get("Runtime")}
    for function_id, function in resources(template, "AWS::Serverless::Function").items():
        runtimes[function_id] = function_property(template, function, "Runtime")
    for layer_id, layer in resources(template, "AWS::Serverless::LayerVersion").items():
        for runtime in layer["Properties"].get("CompatibleRuntimes", []):
            runtimes[f"{layer_id}.CompatibleRuntimes"] = runtime
        runtimes[f"{layer_id}.BuildMethod"] = layer.get("Metadata", {}).get("BuildMethod")
    for where, runtime in runtimes.items():
        if runtime != INTERPRETER_RUNTIME:
            problems.append(f"{where}: {runtime!r} is not {INTERPRETER_RUNTIME}")
    return problems


def schedule_problems(template: Template) -> list[str]:
    problems = []
    for function_id, event_id, props in events_of(template, "Schedule"):
        try:
            validate_schedule_expression(str(props.get("Schedule")))
        except TemplateError as exc:
            problems.append(f"{function_id}/{event_id}: {exc}")
    for rule_id, rule in resources(template, "AWS::Events::Rule").items():
        if "ScheduleExpression" in rule["Properties"]:
            try:
                validate_schedule_expression(str(rule["Properties"]["ScheduleExpression"]))
            except TemplateError as exc:
                problems.append(f"{rule_id}: {exc}")
    return problems


def policy_statements(value: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every IAM statement anywhere (inline policies, key policies), with where it is."""
    if isinstance(value, dict):
        if "Effect" in value and ("Action" in value or "NotAction" in value):
            yield path, value
        for key, item in value.items():
            yield from policy_statements(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from policy_statements(item, f"{path}[{index}]")


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# SNS Publish to a phone number (SMS) has no resource ARN: AWS authorizes it against "*"
# only. Such a statement may name no other action, and a Deny must keep it off every topic.
SMS_ACTIONS = ["sns:Publish"]


def denies_topic_publish(template: Template) -> bool:
    return any(
        statement.get("Effect") == "Deny"
        and as_list(statement.get("Action")) == SMS_ACTIONS
        and "arn:${AWS::Partition}:sns:*:*:*"
        in json.dumps(statement.get("Resource")).replace("\\", "")
        for _, statement in policy_statements(template["Resources"])
    )


def iam_problems(template: Template) -> list[str]:
    problems = []
    key_policies = {
        f"{key_id}.Properties.KeyPolicy" for key_id in resources(template, "AWS::KMS::Key")
    }
    for where, statement in policy_statements(template["Resources"]):
        if "NotAction" in statement:
            problems.append(f"{where}: NotAction grants everything else")
        for action in as_list(statement.get("Action")):
            if action == "*" or (isinstance(action, str) and action.endswith(":*")):
                problems.append(f"{where}: wildcard action {action!r}")
        # In a key policy "*" means the key itself; elsewhere it means every resource.
        in_key_policy = any(where.startswith(prefix) for prefix in key_policies)
        sms_only = (
            statement.get("Effect") == "Allow"
            and as_list(statement.get("Action")) == SMS_ACTIONS
            and denies_topic_publish(template)
        )
        if "*" in as_list(statement.get("Resource")) and not in_key_policy and not sms_only:
            problems.append(f"{where}: Resource '*'")
    return problems


HANDLER_DEFINITION = r"^(?:async\s+)?def\s+{name}\s*\(|^{name}\s*(?::[^=\n]*)?="


def handler_problems(template: Template) -> list[str]:
    problems = []
    for function_id, function in resources(template, "AWS::Serverless::Function").items():
        code_uri = function_property(template, function, "CodeUri")
        module, _, attribute = str(function_property(template, function, "Handler")).rpartition(".")
        path = REPO / str(code_uri) / f"{module.replace('.', '/')}.py"
        if not path.is_file():
            problems.append(f"{function_id}: {path.relative_to(REPO)} does not exist")
            continue
        pattern = re.compile(HANDLER_DEFINITION.format(name=re.escape(attribute)), re.MULTILINE)
        if not pattern.search(path.read_text(encoding="utf-8")):
            problems.append(f"{function_id}: {path.relative_to(REPO)} defines no {attribute}")
    return problems


# A handler file names the frontdesk module whose NEEDS are its settings.
HANDLER_MODULE = re.compile(r"^from (frontdesk(?:\.\w+)*) import (\w+)", re.MULTILINE)
# Needs met by either of two variables ("database": a URL locally, a secret in AWS).
EITHER = {
    "database": ("DATABASE_URL", "DATABASE_SECRET_ARN"),
    "blind_index": ("BLIND_INDEX_KEY", "BLIND_INDEX_SECRET_ARN"),
}


def function_needs(template: Template, function: dict[str, Any]) -> tuple[str, ...]:
    """The settings the function's code checks at cold start (its module's NEEDS)."""
    import importlib

    code_uri = function_property(template, function, "CodeUri")
    module_name = str(function_property(template, function, "Handler")).rpartition(".")[0]
    text = (REPO / str(code_uri) / f"{module_name}.py").read_text(encoding="utf-8")
    package, name = HANDLER_MODULE.findall(text)[-1]
    module = importlib.import_module(package)
    if package == "frontdesk.web.app":  # an HTTP function: the API's or the operators' app
        return tuple(module.OPS_NEEDS if "make_ops_app" in text else module.NEEDS)
    if name != "make_app":  # `from frontdesk.workers import notify`: the worker module
        module = getattr(module, name, None) or importlib.import_module(f"{package}.{name}")
    needs: tuple[str, ...] = module.NEEDS
    return needs


def settings_problems(template: Template) -> list[str]:
    """Every setting a function checks at cold start is in its Environment (or Globals)."""
    problems = []
    global_env = template.get("Globals", {}).get("Function", {}).get("Environment", {})
    for function_id, function in resources(template, "AWS::Serverless::Function").items():
        own = function.get("Properties", {}).get("Environment", {}).get("Variables", {})
        variables = {**global_env.get("Variables", {}), **own}
        for need in function_needs(template, function):
            names = EITHER.get(need, (need.upper(),))
            if not any(n in variables for n in names):
                problems.append(f"{function_id} needs {' or '.join(names)}")
    return problems


def dlq_alarm_problems(template: Template) -> list[str]:
    dlqs = {
        dlq_id
        for queue in resources(template, "AWS::SQS::Queue").values()
        if (
            dlq_id := get_att_target(
                (queue.get("Properties", {}).get("RedrivePolicy") or {}).get("deadLetterTargetArn"),
                "Arn",
            )
        )
    }
    watched = set()
    for alarm in resources(template, "AWS::CloudWatch::Alarm").values():
        props = alarm["Properties"]
        if (props.get("Namespace"), props.get("MetricName")) != (
            "AWS/SQS",
            "ApproximateNumberOfMessagesVisible",
        ):
            continue
        for dimension in props.get("Dimensions", []):
            if dimension.get("Name") == "QueueName":
                watched.add(get_att_target(dimension.get("Value"), "QueueName"))
    return [f"DLQ {dlq} has no ApproximateNumberOfMessagesVisible alarm" for dlq in dlqs - watched]


# ---------------------------------------------------------------- the real template


def test_every_sqs_consumer_is_safe_against_redelivery_and_poison_messages(
    template: Template,
) -> None:
    # Given the template
    # When its SQS event sources are checked against their queues
    problems = sqs_problems(template)
    # Then each has a DLQ, enough receives, a long enough visibility timeout,
    # partial batch responses and bounded concurrency
    assert problems == []
    assert list(events_of(template, "SQS")), "expected at least one SQS consumer"


def test_runtime_is_the_interpreter_of_this_virtual_environment(template: Template) -> None:
    # Given the template and the running interpreter
    # When every runtime setting is compared with it
    problems = runtime_problems(template)
    # Then all match, so `sam build` works without Docker
    assert problems == []


def test_every_schedule_is_a_rate_or_a_six_field_cron(template: Template) -> None:
    # Given the template
    # When every schedule expression is parsed
    problems = schedule_problems(template)
    # Then EventBridge would accept each
    assert problems == []


def test_no_iam_statement_grants_wildcard_actions_or_resources(template: Template) -> None:
    # Given every IAM statement of the template, key policies included
    # When actions and resources are inspected
    problems = iam_problems(template)
    # Then none is "*" or "service:*", and "*" resources appear only in key policies
    assert problems == []
    assert len(list(policy_statements(template["Resources"]))) >= 5


def test_every_function_handler_exists_on_disk(template: Template) -> None:
    # Given each function's CodeUri and Handler
    # When the handler module's text is read (not imported)
    problems = handler_problems(template)
    # Then it defines the named attribute
    assert problems == []


def test_every_dead_letter_queue_has_an_alarm(template: Template) -> None:
    # Given the queues that serve as DLQs
    # When the alarms are matched to them
    problems = dlq_alarm_problems(template)
    # Then each DLQ is watched
    assert problems == []


def test_api_routes_and_their_authorization(template: Template) -> None:
    # Given the template, read as the local runtime reads it
    stack = Provisioned(template=template, parameters=local_parameters(template))
    # When the HTTP routes are listed
    routes = set(stack.http_routes())
    # Then staff routes need the JWT; only the public lead form and the signed webhooks are open
    assert routes == {
        ("POST", "/leads", "StaffJwt"),
        ("GET", "/leads/{id}", "StaffJwt"),
        ("GET", "/leads", "StaffJwt"),
        ("PATCH", "/leads/{id}", "StaffJwt"),
        ("GET", "/jobs/{id}", "StaffJwt"),
        ("POST", "/public/leads", None),
        ("POST", "/jobs/{id}/cancel", "StaffJwt"),
        ("POST", "/assistant/conversations", "StaffJwt"),
        ("POST", "/assistant/conversations/{id}/messages", "StaffJwt"),
        ("GET", "/assistant/conversations/{id}", "StaffJwt"),
        ("GET", "/assistant/messages/{id}", "StaffJwt"),
        ("POST", "/doctors", "StaffJwt"),
        ("GET", "/doctors", "StaffJwt"),
        ("GET", "/doctors/{id}/availability", "StaffJwt"),
        ("POST", "/patients", "StaffJwt"),
        ("GET", "/patients/{id}", "StaffJwt"),
        ("POST", "/appointments", "StaffJwt"),
        ("GET", "/appointments", "StaffJwt"),
        ("PATCH", "/appointments/{id}", "StaffJwt"),
        ("GET", "/appointments/{id}", "StaffJwt"),
        ("GET", "/doctors/{id}", "StaffJwt"),
        ("PATCH", "/doctors/{id}", "StaffJwt"),
        ("POST", "/doctors/{id}/deactivate", "StaffJwt"),
        ("POST", "/doctors/{id}/activate", "StaffJwt"),
        ("GET", "/doctors/{id}/appointments", "StaffJwt"),
        ("GET", "/metrics/daily", "StaffJwt"),
        ("GET", "/metrics/summary", "StaffJwt"),
        ("GET", "/ops/queues", "StaffJwt"),
        ("GET", "/ops/jobs/stuck", "StaffJwt"),
        ("GET", "/ops/jobs", "StaffJwt"),
        ("GET", "/ops/dead-letters", "StaffJwt"),
        ("POST", "/ops/dead-letters/replay", "StaffJwt"),
        ("POST", "/webhooks/{provider}/{account}", None),
        ("POST", "/leads/imports", "StaffJwt"),
        ("POST", "/provider-accounts", "StaffJwt"),
        ("GET", "/provider-accounts", "StaffJwt"),
        ("GET", "/provider-accounts/{id}", "StaffJwt"),
        ("PUT", "/provider-accounts/{id}/credentials", "StaffJwt"),
        ("POST", "/webhooks/endpoints", "StaffJwt"),
        ("GET", "/webhooks/endpoints", "StaffJwt"),
        ("GET", "/webhooks/endpoints/{id}", "StaffJwt"),
        ("PATCH", "/webhooks/endpoints/{id}", "StaffJwt"),
        ("DELETE", "/webhooks/endpoints/{id}", "StaffJwt"),
        ("POST", "/webhooks/endpoints/{id}/rotate-secret", "StaffJwt"),
        ("GET", "/webhooks/endpoints/{id}/deliveries", "StaffJwt"),
        ("GET", "/webhooks/deliveries/{id}", "StaffJwt"),
        ("POST", "/webhooks/deliveries/{id}/replay", "StaffJwt"),
    }
    # And the open route is throttled harder than the API's default
    defaults = template["Resources"]["HttpApi"]["Properties"]["DefaultRouteSettings"]
    public_route = next(
        props for _, _, props in events_of(template, "HttpApi") if props["Path"] == "/public/leads"
    )
    throttling = public_route["RouteSettings"]
    assert throttling["ThrottlingRateLimit"] < defaults["ThrottlingRateLimit"]
    assert throttling["ThrottlingBurstLimit"] < defaults["ThrottlingBurstLimit"]


def test_globals_carry_the_settings_the_code_reads(template: Template) -> None:
    # Given the template with its default parameters
    stack = Provisioned(template=template, parameters=local_parameters(template))
    # When each function's environment is resolved
    environments = {
        spec.logical_id: stack.function_environment(spec.logical_id)
        for spec in stack.functions()
        # These name created resources (keys, queues) that only provisioning resolves.
        if spec.logical_id not in {"ApiFunction", "SyncWorker", "ProviderPoller"}
    }
    # Then every function gets the shared settings
    for environment in environments.values():
        assert environment["POWERTOOLS_SERVICE_NAME"] == "frontdesk"
        assert environment["FRONTDESK_ENV"] == "dev"
        assert environment["DB_CONNECT_TIMEOUT_SECONDS"] == "5"
        assert environment["DB_STATEMENT_TIMEOUT_MS"] == "5000"
        assert "DATABASE_SECRET_ARN" in environment


def test_every_function_gets_the_settings_its_code_checks_at_cold_start(
    template: Template,
) -> None:
    # Given each function's handler and the settings its module says it needs (NEEDS)
    # When they are looked up in its environment (Globals included)
    # Then none is missing: a function missing one would fail at cold start in AWS
    assert settings_problems(template) == []


# ---------------------------------------------------------------- the checks catch mistakes


def broken(template: Template, change: Any) -> Template:
    copied = copy.deepcopy(template)
    change(copied)
    return copied


def test_checks_catch_a_misspelt_function_response_type(template: Template) -> None:
    # Given a template whose worker says ReportBatchItemFailure (no s)
    def misspell(t: Template) -> None:
        event = t["Resources"]["NotifyWorker"]["Properties"]["Events"]["Notifications"]
        event["Properties"]["FunctionResponseTypes"] = ["ReportBatchItemFailure"]

    # When the SQS check runs / Then it reports it
    assert any("FunctionResponseTypes" in p for p in sqs_problems(broken(template, misspell)))


def test_checks_count_the_batching_window_in_the_visibility_timeout(template: Template) -> None:
    # Given a worker whose batching window grew without the queue's visibility timeout
    def wait_longer(t: Template) -> None:
        event = t["Resources"]["NotifyWorker"]["Properties"]["Events"]["Notifications"]
        event["Properties"]["MaximumBatchingWindowInSeconds"] = 20

    # When the SQS check runs / Then it reports it
    assert any("batching window" in p for p in sqs_problems(broken(template, wait_longer)))


def test_checks_catch_a_short_visibility_timeout(template: Template) -> None:
    # Given a worker whose timeout grew without the queue's visibility timeout
    def grow(t: Template) -> None:
        t["Resources"]["NotifyWorker"]["Properties"]["Timeout"] = 60

    # When the SQS check runs / Then it reports it
    assert any("VisibilityTimeout" in p for p in sqs_problems(broken(template, grow)))


def test_checks_catch_a_worker_that_miscounts_its_last_attempt(template: Template) -> None:
    # Given a queue whose maxReceiveCount changed without the worker's MAX_RECEIVE_COUNT
    def raise_count(t: Template) -> None:
        t["Resources"]["NotificationsQueue"]["Properties"]["RedrivePolicy"]["maxReceiveCount"] = 8

    # When the SQS check runs / Then it reports it
    problems = sqs_problems(broken(template, raise_count))
    assert any("MAX_RECEIVE_COUNT" in p for p in problems)


def test_checks_catch_a_wrong_runtime_name(template: Template) -> None:
    # Given a template that says python3.1 (a typo)
    def typo(t: Template) -> None:
        t["Globals"]["Function"]["Runtime"] = "python3.1"

    # When the runtime check runs / Then it reports it
    assert runtime_problems(broken(template, typo))


def test_checks_catch_a_five_field_cron(template: Template) -> None:
    # Given a Unix-style cron on the sweeper
    def unix_cron(t: Template) -> None:
        event = t["Resources"]["OutboxSweeper"]["Properties"]["Events"]["Sweep"]
        event["Properties"]["Schedule"] = "cron(0 * * * *)"

    # When the schedule check runs / Then it reports it
    assert any("6 fields" in p for p in schedule_problems(broken(template, unix_cron)))


def test_checks_catch_wildcard_actions(template: Template) -> None:
    # Given a policy that grants sqs:*
    def widen(t: Template) -> None:
        statements = t["Resources"]["OutboxSweeper"]["Properties"]["Policies"][0]["Statement"]
        statements.append({"Effect": "Allow", "Action": "sqs:*", "Resource": "*"})

    # When the IAM check runs / Then both the action and the resource are reported
    problems = iam_problems(broken(template, widen))
    assert any("sqs:*" in p for p in problems)
    assert any("Resource '*'" in p for p in problems)


def test_checks_catch_sms_publish_without_the_topic_deny(template: Template) -> None:
    # Given the NotifyWorker policy without the Deny that keeps SMS publishing off topics
    def drop_deny(t: Template) -> None:
        statements = t["Resources"]["NotifyWorker"]["Properties"]["Policies"][0]["Statement"]
        statements[:] = [s for s in statements if s.get("Sid") != "PublishToNoTopic"]

    # When the IAM check runs / Then the "*" of the SMS statement is reported
    assert iam_problems(template) == []
    assert any("Resource '*'" in p for p in iam_problems(broken(template, drop_deny)))


def test_checks_catch_a_missing_handler_and_an_unwatched_dlq(template: Template) -> None:
    # Given a function pointing at a module that does not exist, and no alarms
    def damage(t: Template) -> None:
        t["Resources"]["OutboxSweeper"]["Properties"]["Handler"] = "missing.handler"
        for alarm_id in resources(t, "AWS::CloudWatch::Alarm"):
            del t["Resources"][alarm_id]

    damaged = broken(template, damage)
    # When the checks run / Then both are reported
    assert any("missing.py" in p for p in handler_problems(damaged))
    assert dlq_alarm_problems(damaged)


def test_checks_catch_a_function_without_a_setting_it_needs(template: Template) -> None:
    # Given the LlmWorker without its queue's URL
    def drop_queue_url(t: Template) -> None:
        del t["Resources"]["LlmWorker"]["Properties"]["Environment"]["Variables"]["LLM_QUEUE_URL"]

    # When the settings check runs / Then it names the function and the variable
    assert settings_problems(broken(template, drop_queue_url)) == ["LlmWorker needs LLM_QUEUE_URL"]


# ---------------------------------------------------------------- sample events


def sample_event(function_id: str, template: Template) -> dict[str, Any]:
    code_uri = str(template["Resources"][function_id]["Properties"]["CodeUri"])
    path = REPO / "events" / f"{code_uri.rstrip('/').rsplit('/', 1)[-1]}.json"
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def custom_resource_of(template: Template, function_id: str) -> str | None:
    """The custom resource whose ServiceToken is the function, if any."""
    for logical_id, resource in template["Resources"].items():
        token = (resource.get("Properties") or {}).get("ServiceToken")
        if resource["Type"].startswith(("AWS::CloudFormation::CustomResource", "Custom::")) and (
            get_att_target(token, "Arn") == function_id
        ):
            return str(logical_id)
    return None


def test_every_function_has_a_sample_event_shaped_like_its_trigger(template: Template) -> None:
    # Given each function and events/<its code folder>.json
    stack = Provisioned(template=template, parameters=local_parameters(template))
    websocket_routes: dict[str, set[str]] = {}
    websocket_authorizers: dict[str, tuple[str, ...]] = {}
    for api in websocket_apis(stack):
        for route in api.routes.values():
            websocket_routes.setdefault(route.function, set()).add(route.key)
            if route.authorizer_function is not None:
                websocket_authorizers[route.authorizer_function] = route.identity_source
    for function_id, function in resources(template, "AWS::Serverless::Function").items():
        event = sample_event(function_id, template)
        kinds = {e["Type"] for e in (function["Properties"].get("Events") or {}).values()}
        # When its trigger is looked up / Then the sample has that trigger's shape
        if "SQS" in kinds:
            record = event["Records"][0]
            assert record["eventSource"] == "aws:sqs"
            assert {"messageId", "receiptHandle", "body", "attributes", "md5OfBody"} <= set(record)
        elif "HttpApi" in kinds:
            assert event["version"] == "2.0"
            method, path = event["routeKey"].split(" ", 1)
            assert (method, path) in {(r.method, r.path) for r in stack.http_routes(function_id)}
            assert event["requestContext"]["http"]["method"] == method
        elif not kinds and custom_resource_of(template, function_id):
            # A custom resource's function: CloudFormation's request
            assert event["RequestType"] in {"Create", "Update", "Delete"}
            assert {"ResponseURL", "StackId", "RequestId", "LogicalResourceId"} <= set(event)
            assert event["LogicalResourceId"] == custom_resource_of(template, function_id)
        elif function_id in websocket_routes:
            # A WebSocket route's function: API Gateway's event for one of its routes
            context = event["requestContext"]
            assert context["routeKey"] in websocket_routes[function_id]
            assert {"connectionId", "eventType", "stage", "apiId"} <= set(context)
        elif function_id in websocket_authorizers:
            # A WebSocket REQUEST authorizer: the handshake's identity sources and methodArn
            assert event["type"] == "REQUEST"
            assert event["methodArn"].endswith("/$connect")
            for source in websocket_authorizers[function_id]:
                assert source.rsplit(".", 1)[-1] in event["queryStringParameters"]
        elif "Schedule" in kinds:
            inputs = [
                json.loads(e["Properties"]["Input"])
                for e in function["Properties"]["Events"].values()
                if "Input" in e.get("Properties", {})
            ]
            if inputs:  # a schedule with Input sends that Input, not a Scheduled Event
                assert event in inputs
            else:
                assert event["detail-type"] == "Scheduled Event"
                assert event["source"] == "aws.events"
        else:
            pytest.fail(f"{function_id}: no sample event check for {kinds}")


def test_each_http_function_serves_exactly_the_routes_the_template_gives_it(
    template: Template,
) -> None:
    from frontdesk.config import Settings
    from frontdesk.web.app import API_ROUTERS, OPS_ROUTERS, create_app

    # Given each HTTP function's routers (the operators' routes in a function of their own)
    apps = {"ApiFunction": API_ROUTERS, "OpsFunction": OPS_ROUTERS}
    stack = Provisioned(template=template, parameters=local_parameters(template))
    http_functions = {s.logical_id for s in stack.functions() if stack.http_routes(s.logical_id)}
    assert set(apps) == http_functions

    def shape(path: str) -> str:
        return re.sub(r"\{[^}]+\}", "{}", path)

    for function_id, routers in apps.items():
        # When its app's operations are compared with its HttpApi events
        spec = create_app(Settings(), routers).openapi()
        served = {(m.upper(), shape(p)) for p, ops in spec["paths"].items() for m in ops}
        routed = {(r.method, shape(r.path)) for r in stack.http_routes(function_id)}
        # Then each serves what API Gateway sends it, and nothing else
        assert served == routed, function_id


def test_every_event_an_endpoint_may_subscribe_to_reaches_the_webhooks_queue(
    template: Template,
) -> None:
    from frontdesk.webhooks.endpoints import SUBSCRIBABLE

    # Given the bus's rule to the webhooks queue
    rule = template["Resources"]["WebhookEventsRule"]["Properties"]
    # Then it routes exactly the event types a registration accepts
    assert sorted(rule["EventPattern"]["detail-type"]) == sorted(SUBSCRIBABLE)
