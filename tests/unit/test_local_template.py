"""local/template/ without AWS: loading tags, resolving intrinsics, schedules, stack views."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from local.template import (
    NO_VALUE,
    Provisioned,
    Resolver,
    TemplateError,
    creation_order,
    cron_next,
    generate_secret_string,
    load_template,
    local_parameters,
    next_fire_interval,
    next_fire_time,
    parameter_values,
    parse_cron,
    pseudo_parameters,
    references,
    scheduled_event,
    validate_schedule_expression,
)

# ---------------------------------------------------------------- loading


def write_template(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "template.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_short_form_tags_load_as_long_form(tmp_path: Path) -> None:
    # Given a template using every short-form tag
    path = write_template(
        tmp_path,
        """
        Resources:
          R:
            Type: X
            Properties:
              Ref: !Ref Param
              AttDot: !GetAtt Queue.Arn
              AttDeep: !GetAtt Api.Outputs.Url
              AttList: !GetAtt [Queue, Arn]
              Sub: !Sub "${AWS::Region}-x"
              SubMap: !Sub [ "${A}", { A: !Ref Param } ]
              If: !If [Cond, 1, 2]
              Equals: !Equals [a, b]
              Not: !Not [!Condition Cond]
              And: !And [!Condition A, !Condition B]
              Or: !Or [!Condition A, !Condition B]
              Select: !Select [0, !Split [",", "a,b"]]
              Join: !Join ["-", [a, b]]
              Find: !FindInMap [M, K, V]
              Import: !ImportValue Other
              B64: !Base64 text
              Azs: !GetAZs ""
        """,
    )
    # When it is loaded
    props = load_template(path)["Resources"]["R"]["Properties"]
    # Then each tag is the long-form intrinsic
    assert props["Ref"] == {"Ref": "Param"}
    assert props["AttDot"] == {"Fn::GetAtt": ["Queue", "Arn"]}
    assert props["AttDeep"] == {"Fn::GetAtt": ["Api", "Outputs.Url"]}
    assert props["AttList"] == {"Fn::GetAtt": ["Queue", "Arn"]}
    assert props["Sub"] == {"Fn::Sub": "${AWS::Region}-x"}
    assert props["SubMap"] == {"Fn::Sub": ["${A}", {"A": {"Ref": "Param"}}]}
    assert props["If"] == {"Fn::If": ["Cond", 1, 2]}
    assert props["Equals"] == {"Fn::Equals": ["a", "b"]}
    assert props["Not"] == {"Fn::Not": [{"Condition": "Cond"}]}
    assert props["And"] == {"Fn::And": [{"Condition": "A"}, {"Condition": "B"}]}
    assert props["Or"] == {"Fn::Or": [{"Condition": "A"}, {"Condition": "B"}]}
    assert props["Select"] == {"Fn::Select": [0, {"Fn::Split": [",", "a,b"]}]}
    assert props["Join"] == {"Fn::Join": ["-", ["a", "b"]]}
    assert props["Find"] == {"Fn::FindInMap": ["M", "K", "V"]}
    assert props["Import"] == {"Fn::ImportValue": "Other"}
    assert props["B64"] == {"Fn::Base64": "text"}
    assert props["Azs"] == {"Fn::GetAZs": ""}


def test_a_file_without_resources_is_refused(tmp_path: Path) -> None:
    # Given YAML that is not a template / When loaded / Then it is refused
    with pytest.raises(TemplateError):
        load_template(write_template(tmp_path, "just: text\n"))


def test_a_resource_given_twice_is_refused(tmp_path: Path) -> None:
    # Given a template naming one resource twice (YAML alone would keep the last)
    text = """
        Resources:
          Topic:
            Type: AWS::SNS::Topic
          Queue:
            Type: AWS::SQS::Queue
          Topic:
            Type: AWS::SNS::Topic
    """
    # When loaded / Then it is refused, naming the key and both lines
    with pytest.raises(TemplateError, match=r"'Topic' is given twice \(lines 3 and 7\)"):
        load_template(write_template(tmp_path, textwrap.dedent(text)))


# ---------------------------------------------------------------- resolving

TEMPLATE: dict[str, Any] = {
    "Parameters": {
        "Environment": {"Type": "String", "AllowedValues": ["dev", "prod"], "Default": "dev"},
        "Subnets": {"Type": "CommaDelimitedList", "Default": ""},
        "Secret": {"Type": "String", "Default": ""},
        "Size": {"Type": "Number", "Default": 5},
    },
    "Mappings": {"Sizes": {"dev": {"Memory": 256}, "prod": {"Memory": 1024}}},
    "Conditions": {
        "IsProd": {"Fn::Equals": [{"Ref": "Environment"}, "prod"]},
        "HasSecret": {"Fn::Not": [{"Fn::Equals": [{"Ref": "Secret"}, ""]}]},
        "ProdWithSecret": {"Fn::And": [{"Condition": "IsProd"}, {"Condition": "HasSecret"}]},
        "ProdOrSecret": {"Fn::Or": [{"Condition": "IsProd"}, {"Condition": "HasSecret"}]},
    },
    "Resources": {
        "Queue": {"Type": "AWS::SQS::Queue"},
        "Function": {"Type": "AWS::Serverless::Function"},
        "Only": {"Type": "AWS::SQS::Queue", "Condition": "IsProd"},
    },
}
QUEUE = {
    "Ref": "https://sqs.us-east-1.amazonaws.com/123456789012/q",
    "Arn": "arn:aws:sqs:us-east-1:123456789012:q",
    "QueueName": "q",
}


def resolver(**overrides: Any) -> Resolver:
    return Resolver(
        TEMPLATE,
        parameter_values(TEMPLATE, overrides),
        pseudo_parameters(region="eu-west-1"),
        {"Queue": QUEUE},
    )


def test_ref_resolves_parameters_pseudo_parameters_and_resources() -> None:
    # Given a resolver with default parameters and one created queue
    r = resolver()
    # When Refs are resolved / Then each kind of name gives its value
    assert r.resolve({"Ref": "Environment"}) == "dev"
    assert r.resolve({"Ref": "Subnets"}) == []
    assert r.resolve({"Ref": "Size"}) == "5"
    assert r.resolve({"Ref": "AWS::Region"}) == "eu-west-1"
    assert r.resolve({"Ref": "AWS::AccountId"}) == "123456789012"
    assert r.resolve({"Ref": "AWS::StackName"}) == "frontdesk-local"
    assert r.resolve({"Ref": "AWS::Partition"}) == "aws"
    assert r.resolve({"Ref": "AWS::URLSuffix"}) == "amazonaws.com"
    assert r.resolve({"Ref": "Queue"}) == QUEUE["Ref"]
    assert r.resolve({"Ref": "Function"}) == "Function"  # not created: its logical id
    with pytest.raises(TemplateError):
        r.resolve({"Ref": "Nope"})


def test_get_att_reads_created_resources_only() -> None:
    # Given a resolver with one created queue
    r = resolver()
    # When attributes are read / Then created ones resolve and others are an error
    assert r.resolve({"Fn::GetAtt": ["Queue", "Arn"]}) == QUEUE["Arn"]
    assert r.resolve({"Fn::GetAtt": "Queue.QueueName"}) == "q"
    with pytest.raises(TemplateError):
        r.resolve({"Fn::GetAtt": ["Function", "Arn"]})


def test_sub_with_refs_attributes_variables_and_literals() -> None:
    # Given a resolver
    r = resolver(Environment="prod")
    # When Fn::Sub strings are resolved
    plain = r.resolve({"Fn::Sub": "frontdesk-${Environment}-${AWS::Region}"})
    attribute = r.resolve({"Fn::Sub": "${Queue.Arn}/${Queue}"})
    mapped = r.resolve(
        {"Fn::Sub": ["${Name}@${AWS::AccountId} ${!Literal}", {"Name": {"Ref": "Environment"}}]}
    )
    # Then names, attributes, variables and ${!...} literals are handled
    assert plain == "frontdesk-prod-eu-west-1"
    assert attribute == f"{QUEUE['Arn']}/{QUEUE['Ref']}"
    assert mapped == "prod@123456789012 ${Literal}"


def test_conditions_and_if() -> None:
    # Given the default parameters (dev, no secret) and prod with a secret
    dev, prod = resolver(), resolver(Environment="prod", Secret="arn:secret")
    # When conditions are evaluated
    # Then Equals/Not/And/Or/Condition work and If picks a branch
    assert (dev.condition("IsProd"), prod.condition("IsProd")) == (False, True)
    assert (dev.condition("ProdWithSecret"), prod.condition("ProdWithSecret")) == (False, True)
    assert dev.condition("ProdOrSecret") is False
    assert dev.resolve({"Fn::If": ["IsProd", 90, 14]}) == 14
    assert prod.resolve({"Fn::If": ["IsProd", 90, 14]}) == 90


def test_no_value_removes_properties_and_list_items() -> None:
    # Given values that use AWS::NoValue through Fn::If
    r = resolver()
    no_value = {"Fn::If": ["IsProd", "x", {"Ref": "AWS::NoValue"}]}
    # When resolved / Then the key and the list item disappear
    assert r.resolve({"Keep": 1, "Drop": no_value}) == {"Keep": 1}
    assert r.resolve(["a", no_value, "b"]) == ["a", "b"]
    assert r.resolve({"Ref": "AWS::NoValue"}) is NO_VALUE


def test_select_split_join_find_in_map_base64_get_azs() -> None:
    # Given a resolver
    r = resolver(Subnets="subnet-a, subnet-b")
    # When the remaining functions are resolved / Then they behave like CloudFormation
    assert r.resolve({"Fn::Select": [1, {"Fn::Split": ["@", "ops@example.com"]}]}) == "example.com"
    assert r.resolve({"Fn::Join": [",", {"Ref": "Subnets"}]}) == "subnet-a,subnet-b"
    assert r.resolve({"Fn::FindInMap": ["Sizes", {"Ref": "Environment"}, "Memory"]}) == 256
    assert r.resolve({"Fn::Base64": "hi"}) == "aGk="
    assert r.resolve({"Fn::GetAZs": ""}) == ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
    with pytest.raises(TemplateError):
        r.resolve({"Fn::ImportValue": "Other"})
    with pytest.raises(TemplateError):
        r.resolve({"Fn::Cidr": ["10.0.0.0/16", 2, 8]})


def test_parameters_are_checked() -> None:
    # Given the sample template
    # When a value outside AllowedValues or an unknown name is passed / Then it is refused
    with pytest.raises(TemplateError):
        parameter_values(TEMPLATE, {"Environment": "staging"})
    with pytest.raises(TemplateError):
        parameter_values(TEMPLATE, {"Nope": "x"})


def test_references_find_refs_get_atts_and_sub_names() -> None:
    # Given a value referring to things three ways, plus a Sub variable and a literal
    value = {
        "A": {"Ref": "One"},
        "B": [{"Fn::GetAtt": ["Two", "Arn"]}],
        "C": {"Fn::Sub": ["${Three.Arn} ${Var} ${!Skip} ${AWS::Region}", {"Var": "x"}]},
    }
    # When its references are collected / Then the names (not variables, literals) appear
    assert references(value) == {"One", "Two", "Three", "AWS::Region"}


# ---------------------------------------------------------------- schedules


@pytest.mark.parametrize(
    ("expression", "seconds"),
    [
        ("rate(1 minute)", 60.0),
        ("rate(5 minutes)", 300.0),
        ("rate(1 hour)", 3600.0),
        ("rate(2 hours)", 7200.0),
        ("rate(1 day)", 86400.0),
    ],
)
def test_rate_expressions(expression: str, seconds: float) -> None:
    # Given a rate expression / When its interval is asked / Then it is in seconds
    assert next_fire_interval(expression) == seconds


@pytest.mark.parametrize(
    "expression",
    ["rate(1 minutes)", "rate(5 minute)", "rate(0 minutes)", "rate(5 seconds)", "rate(5m)"],
)
def test_rate_expressions_eventbridge_refuses_are_refused(expression: str) -> None:
    # Given an expression EventBridge refuses / When parsed / Then it is refused here too
    with pytest.raises(TemplateError):
        next_fire_interval(expression)


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        # every 15 minutes
        ("cron(0/15 * * * ? *)", datetime(2026, 1, 1, 10, 7), datetime(2026, 1, 1, 10, 15)),
        # 02:30 every day: strictly after, so the same minute goes to the next day
        ("cron(30 2 * * ? *)", datetime(2026, 1, 1, 2, 30), datetime(2026, 1, 2, 2, 30)),
        # weekdays at 08:00 (Friday 2026-01-02 after 08:00 -> Monday 2026-01-05)
        ("cron(0 8 ? * MON-FRI *)", datetime(2026, 1, 2, 9, 0), datetime(2026, 1, 5, 8, 0)),
        # numbered days: 1 = SUN
        ("cron(0 8 ? * 1 *)", datetime(2026, 1, 1, 0, 0), datetime(2026, 1, 4, 8, 0)),
        # lists and month names, across the year end
        ("cron(0 0 1 JAN,JUL ? *)", datetime(2026, 7, 1, 0, 0), datetime(2027, 1, 1, 0, 0)),
        # a range of hours with a step
        ("cron(5 9-17/4 * * ? *)", datetime(2026, 3, 3, 13, 6), datetime(2026, 3, 3, 17, 5)),
        # a given year only
        ("cron(0 12 29 2 ? 2028)", datetime(2026, 1, 1), datetime(2028, 2, 29, 12, 0)),
    ],
)
def test_cron_next(expression: str, after: datetime, expected: datetime) -> None:
    # Given a 6-field cron and a moment (naive means UTC)
    # When the next firing is computed / Then it is the first match strictly after it
    assert cron_next(expression, after) == expected.replace(tzinfo=UTC)


@pytest.mark.parametrize(
    "expression",
    [
        "cron(0 * * * *)",  # 5 fields (Unix style)
        "cron(0 8 * * * *)",  # neither day field is ?
        "cron(0 8 ? * ? *)",  # both are ?
        "cron(60 * * * ? *)",  # minute out of range
        "cron(0 8 ? * FUNDAY *)",
        "at(2026-01-01T00:00:00)",
    ],
)
def test_invalid_schedule_expressions_are_refused(expression: str) -> None:
    # Given an expression EventBridge refuses / When validated / Then it is refused
    with pytest.raises(TemplateError):
        validate_schedule_expression(expression)


def test_a_cron_that_never_fires_is_reported() -> None:
    # Given February 30th / When the next firing is asked / Then it is an error
    with pytest.raises(TemplateError):
        cron_next("cron(0 0 30 2 ? *)", datetime(2026, 1, 1, tzinfo=UTC))


def test_parse_cron_numbers_days_like_eventbridge() -> None:
    # Given SUN-SAT / When parsed / Then 1..7
    assert parse_cron("cron(0 0 ? * SUN-SAT *)").days_of_week == frozenset(range(1, 8))


def test_next_fire_time_handles_both_kinds() -> None:
    # Given a moment / When asked for the next firing of a rate and a cron
    moment = datetime(2026, 1, 1, 10, 0, 30, tzinfo=UTC)
    # Then the rate adds its interval and the cron finds its minute
    assert next_fire_time("rate(1 minute)", moment) == datetime(2026, 1, 1, 10, 1, 30, tzinfo=UTC)
    assert next_fire_time("cron(0 11 * * ? *)", moment) == datetime(2026, 1, 1, 11, tzinfo=UTC)
    with pytest.raises(TemplateError):
        next_fire_interval("cron(0 11 * * ? *)")


def test_scheduled_event_has_the_shape_eventbridge_sends() -> None:
    # Given a rule ARN and a firing time
    arn = "arn:aws:events:eu-west-1:123456789012:rule/frontdesk-local-OutboxSweeperSweep"
    # When the event is built
    event = scheduled_event(arn, datetime(2026, 11, 23, 15, 0, 0, 123, tzinfo=UTC))
    # Then it matches what Lambda receives from a schedule rule
    assert list(event) == [
        "version",
        "id",
        "detail-type",
        "source",
        "account",
        "time",
        "region",
        "resources",
        "detail",
    ]
    assert event["version"] == "0"
    assert event["detail-type"] == "Scheduled Event"
    assert event["source"] == "aws.events"
    assert (event["account"], event["region"]) == ("123456789012", "eu-west-1")
    assert event["time"] == "2026-11-23T15:00:00Z"
    assert event["resources"] == [arn]
    assert event["detail"] == {}


# ---------------------------------------------------------------- the real template, offline


@pytest.fixture(scope="module")
def stack() -> Provisioned:
    """The real template with made-up physical ids for what provision would create."""
    template = load_template()
    physical = {
        "NotificationsQueue": {
            "Ref": "http://localhost/123456789012/frontdesk-local-NotificationsQueue",
            "QueueUrl": "http://localhost/123456789012/frontdesk-local-NotificationsQueue",
            "Arn": "arn:aws:sqs:us-east-1:123456789012:frontdesk-local-NotificationsQueue",
            "QueueName": "frontdesk-local-NotificationsQueue",
        },
        "PushQueue": {
            "Ref": "http://localhost/123456789012/frontdesk-local-PushQueue",
            "QueueUrl": "http://localhost/123456789012/frontdesk-local-PushQueue",
            "Arn": "arn:aws:sqs:us-east-1:123456789012:frontdesk-local-PushQueue",
            "QueueName": "frontdesk-local-PushQueue",
        },
        "LlmQueue": {
            "Ref": "http://localhost/123456789012/frontdesk-local-LlmQueue",
            "QueueUrl": "http://localhost/123456789012/frontdesk-local-LlmQueue",
            "Arn": "arn:aws:sqs:us-east-1:123456789012:frontdesk-local-LlmQueue",
            "QueueName": "frontdesk-local-LlmQueue",
        },
        "WebhooksQueue": {
            "Ref": "http://localhost/123456789012/frontdesk-local-WebhooksQueue",
            "QueueUrl": "http://localhost/123456789012/frontdesk-local-WebhooksQueue",
            "Arn": "arn:aws:sqs:us-east-1:123456789012:frontdesk-local-WebhooksQueue",
            "QueueName": "frontdesk-local-WebhooksQueue",
        },
        "SyncQueue": {
            "Ref": "http://localhost/123456789012/frontdesk-local-SyncQueue",
            "QueueUrl": "http://localhost/123456789012/frontdesk-local-SyncQueue",
            "Arn": "arn:aws:sqs:us-east-1:123456789012:frontdesk-local-SyncQueue",
            "QueueName": "frontdesk-local-SyncQueue",
        },
        "EventBus": {
            "Ref": "frontdesk-dev",
            "Name": "frontdesk-dev",
            "Arn": "arn:aws:events:us-east-1:123456789012:event-bus/frontdesk-dev",
        },
        "PiiKey": {"Ref": "key-1", "KeyId": "key-1", "Arn": "arn:aws:kms:us-east-1:1:key/key-1"},
        "BlindIndexSecret": {"Ref": "arn:aws:secretsmanager:x:1:secret:b"},
    }
    return Provisioned(template=template, parameters=local_parameters(template), physical=physical)


def test_function_environment_merges_globals_and_resolves(stack: Provisioned) -> None:
    # Given the real template / When the API function's environment is built
    environment = stack.function_environment("ApiFunction")
    # Then globals and the function's own variables are there, resolved to strings
    assert environment["POWERTOOLS_SERVICE_NAME"] == "frontdesk"
    assert environment["FRONTDESK_ENV"] == "dev"
    assert environment["DATABASE_SECRET_ARN"] == ""
    assert environment["DB_STATEMENT_TIMEOUT_MS"] == "5000"
    assert environment["KMS_KEY_ID"] == "arn:aws:kms:us-east-1:1:key/key-1"
    assert environment["EVENT_BUS_NAME"] == "frontdesk-dev"
    assert environment["NOTIFICATIONS_QUEUE_URL"].endswith("/frontdesk-local-NotificationsQueue")
    assert all(isinstance(value, str) for value in environment.values())


def test_functions_take_timeout_from_the_function_or_globals(stack: Provisioned) -> None:
    # Given the real template / When the functions are listed
    specs = {spec.logical_id: spec for spec in stack.functions()}
    # Then code folders, handlers, timeouts, memory and layers are read from it
    assert set(specs) >= {"ApiFunction", "NotifyWorker", "OutboxSweeper", "LlmWorker", "Reminders"}
    worker = specs["NotifyWorker"]
    assert worker.code_uri == stack.base_dir / "functions/notify_worker"
    assert (worker.handler, worker.timeout, worker.memory) == ("handler.handler", 30, 512)
    assert worker.runtime == "python3.13"
    assert worker.layers == (stack.base_dir / "layers/frontdesk",)


def test_sqs_event_sources(stack: Provisioned) -> None:
    # Given the real template / When its SQS event sources are listed
    sources = {s.function_logical_id: s for s in stack.sqs_event_sources()}
    assert set(sources) == {
        "NotifyWorker",
        "LlmWorker",
        "SyncWorker",
        "PushWorker",
        "WebhookWorker",
    }
    assert sources["SyncWorker"].queue_logical_id == "SyncQueue"
    assert sources["SyncWorker"].visibility_timeout == 721
    source = sources["NotifyWorker"]
    # Then they carry what the poller needs to behave like Lambda
    assert source.function_logical_id == "NotifyWorker"
    assert source.queue_logical_id == "NotificationsQueue"
    assert source.queue_url == stack.physical["NotificationsQueue"]["QueueUrl"]
    assert source.batch_size == 50
    assert source.maximum_batching_window_seconds == 1
    assert source.report_batch_item_failures is True
    assert source.maximum_concurrency == 5
    assert source.visibility_timeout == 181
    assert source.enabled is True


def test_schedules(stack: Provisioned) -> None:
    # Given the real template / When its schedules are listed
    schedules = {s.function_logical_id: s for s in stack.schedules()}
    assert schedules["Reminders"].expression == "rate(5 minutes)"
    assert schedules["ProviderPoller"].expression == "rate(15 minutes)"
    schedule = schedules["OutboxSweeper"]
    # Then the sweeper fires every minute with a Scheduled Event
    assert schedule.function_logical_id == "OutboxSweeper"
    assert schedule.expression == "rate(1 minute)"
    assert schedule.enabled is True
    assert schedule.fixed_input is False
    assert schedule.input["detail-type"] == "Scheduled Event"
    assert schedule.input["resources"] == [schedule.rule_arn]
    fired = schedule.event_at(datetime(2026, 1, 1, tzinfo=UTC))
    assert fired["time"] == "2026-01-01T00:00:00Z"


def test_http_routes_and_jwt_authorizers(stack: Provisioned) -> None:
    # Given the real template / When routes and authorizers are listed
    routes = stack.http_routes("ApiFunction")
    authorizers = stack.jwt_authorizers()
    # Then each route names its authorizer (None when public), with issuer and audience
    assert ("POST", "/public/leads", None) in routes
    assert ("GET", "/jobs/{id}", "StaffJwt") in routes
    assert stack.http_routes("NotifyWorker") == []
    jwt = authorizers["StaffJwt"]
    assert (jwt.issuer, jwt.audiences) == ("https://auth.frontdesk.local/", ("frontdesk-api",))
    assert jwt.identity_source == "$request.header.Authorization"


def test_creation_order_puts_dead_letter_queues_first(stack: Provisioned) -> None:
    # Given the real template / When the creation order is computed
    order = creation_order(stack)
    # Then everything provisionable is there, each after what it refers to
    assert order.index("NotificationsDLQ") < order.index("NotificationsQueue")
    assert order.index("PiiKey") < order.index("PiiKeyAlias")
    assert set(order) >= {
        "NewLeadEmailTemplate",
        "NotificationsDLQ",
        "NotificationsQueue",
        "EventBus",
        "PiiKey",
        "PiiKeyAlias",
        "BlindIndexSecret",
    }


def test_conditional_resources_are_left_out_when_their_condition_is_false() -> None:
    # Given a resource that exists only in prod
    dev = Provisioned(template=TEMPLATE, parameters=parameter_values(TEMPLATE))
    prod = Provisioned(
        template=TEMPLATE, parameters=parameter_values(TEMPLATE, {"Environment": "prod"})
    )
    # When the queues are listed / Then it appears only when its condition holds
    assert set(dev.resources("AWS::SQS::Queue")) == {"Queue"}
    assert set(prod.resources("AWS::SQS::Queue")) == {"Queue", "Only"}


def test_generated_secret_strings_follow_the_spec() -> None:
    # Given the blind index secret's spec / When a value is generated
    value = generate_secret_string({"PasswordLength": 64, "ExcludePunctuation": True})
    # Then it has the length and only letters and digits
    assert len(value) == 64 and value.isalnum()
    # And a JSON template gets the value under its key
    document = generate_secret_string(
        {"SecretStringTemplate": '{"user": "app"}', "GenerateStringKey": "password"}
    )
    assert document.startswith('{"user": "app", "password": ')
