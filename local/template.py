"""template.yaml as the local runtime sees it: load, resolve, provision in moto, describe.

Development only, never deployed. The template is the truth: the local runtime, the moto
resources and the infrastructure tests all take functions, queues, schedules and routes
from template.yaml through this module, never from a second list.

- `load_template` reads CloudFormation YAML (short-form tags become long-form dicts).
- `Resolver` evaluates intrinsics against parameters, pseudo parameters, Conditions and
  the physical ids of created resources.
- `provision` creates the template's queues, buses, rules, keys, aliases and secrets in
  moto (in-process `mock_aws` or a moto server URL), idempotently, and verifies the SES
  sender; it returns a `Provisioned` stack that answers the runtime's questions
  (`functions`, `function_environment`, `sqs_event_sources`, `schedules`, `http_routes`).
- `next_fire_interval`, `cron_next`, `next_fire_time` and `scheduled_event` cover what
  EventBridge schedules do.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import string
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, cast

import yaml
from botocore.exceptions import ClientError

if TYPE_CHECKING:
    import boto3

REPO = Path(__file__).resolve().parent.parent
TEMPLATE_PATH = REPO / "template.yaml"

LOCAL_STACK_NAME = "frontdesk-local"
LOCAL_ACCOUNT_ID = "123456789012"  # moto's default account
DEFAULT_REGION = "us-east-1"
PARTITION = "aws"
URL_SUFFIX = "amazonaws.com"

# Tags moto keys with, so a second `provision` finds keys that have no alias to look up.
_KEY_TAG = "frontdesk:stack-resource"


class TemplateError(ValueError):
    """The template asks for something this module cannot do locally, or is invalid."""


# ---------------------------------------------------------------------------- loading


class CloudFormationLoader(yaml.SafeLoader):
    """A SafeLoader that reads CloudFormation short-form tags as their long form."""


_TAGGED_FUNCTIONS = (
    "Base64",
    "Cidr",
    "Equals",
    "FindInMap",
    "GetAZs",
    "If",
    "ImportValue",
    "Join",
    "Not",
    "And",
    "Or",
    "Select",
    "Split",
    "Sub",
)


def _node_value(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    raise TemplateError(f"unexpected YAML node {node!r}")  # pragma: no cover


def _long_form(key: str) -> Callable[[yaml.SafeLoader, yaml.Node], dict[str, Any]]:
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
        return {key: _node_value(loader, node)}

    return construct


def _construct_get_att(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
    value = _node_value(loader, node)
    if isinstance(value, str):
        logical_id, dot, attribute = value.partition(".")
        if not dot:
            raise TemplateError(f"!GetAtt {value!r} needs the form LogicalId.Attribute")
        return {"Fn::GetAtt": [logical_id, attribute]}
    return {"Fn::GetAtt": value}


CloudFormationLoader.add_constructor("!Ref", _long_form("Ref"))
CloudFormationLoader.add_constructor("!Condition", _long_form("Condition"))
CloudFormationLoader.add_constructor("!GetAtt", _construct_get_att)
for _name in _TAGGED_FUNCTIONS:
    CloudFormationLoader.add_constructor(f"!{_name}", _long_form(f"Fn::{_name}"))


def load_template(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    """The template as plain data, short-form tags turned into {"Ref": ...}, {"Fn::...": ...}."""
    with path.open(encoding="utf-8") as stream:
        template = yaml.load(stream, Loader=CloudFormationLoader)  # noqa: S506 (SafeLoader subclass)
    if not isinstance(template, dict) or not isinstance(template.get("Resources"), dict):
        raise TemplateError(f"{path} is not a CloudFormation template (no Resources)")
    return template


# ---------------------------------------------------------------------------- resolving


class _NoValue:
    """AWS::NoValue: removes the enclosing property or list item."""

    def __repr__(self) -> str:
        return "AWS::NoValue"


NO_VALUE: Any = _NoValue()
_SUB_VARIABLE = re.compile(r"\$\{([^}]*)\}")


def parameter_values(
    template: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Each parameter's value: the override if given, else the default (lists split)."""
    declared: dict[str, Any] = template.get("Parameters") or {}
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(declared))
    if unknown:
        raise TemplateError(f"unknown parameters: {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for name, spec in declared.items():
        value = overrides.get(name, spec.get("Default"))
        if value is None:
            raise TemplateError(f"parameter {name} has no default: pass it as an override")
        kind = str(spec.get("Type", "String"))
        if kind == "CommaDelimitedList" or kind.startswith("List<"):
            if isinstance(value, str):
                value = [item.strip() for item in value.split(",")] if value else []
            values[name] = [str(item) for item in value]
            continue
        value = _scalar_string(value)
        allowed = spec.get("AllowedValues")
        if allowed is not None and value not in [_scalar_string(item) for item in allowed]:
            raise TemplateError(f"parameter {name}={value!r} is not one of {allowed}")
        values[name] = value
    return values


def pseudo_parameters(
    *, region: str, account_id: str = LOCAL_ACCOUNT_ID, stack_name: str = LOCAL_STACK_NAME
) -> dict[str, Any]:
    stack_id = (
        f"arn:{PARTITION}:cloudformation:{region}:{account_id}:stack/{stack_name}/"
        f"{uuid.uuid5(uuid.NAMESPACE_URL, stack_name)}"
    )
    return {
        "AWS::AccountId": account_id,
        "AWS::NoValue": NO_VALUE,
        "AWS::NotificationARNs": [],
        "AWS::Partition": PARTITION,
        "AWS::Region": region,
        "AWS::StackId": stack_id,
        "AWS::StackName": stack_name,
        "AWS::URLSuffix": URL_SUFFIX,
    }


@dataclass
class Resolver:
    """Evaluates CloudFormation intrinsic functions.

    `physical` maps a created resource's logical id to its Ref value ("Ref") and its
    attributes (e.g. "Arn"). Ref of a resource that was not created gives its logical id;
    GetAtt of one is an error (there is nothing true to return).
    """

    template: Mapping[str, Any]
    parameters: Mapping[str, Any]
    pseudo: Mapping[str, Any]
    physical: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    _conditions: dict[str, bool] = field(default_factory=dict, init=False, repr=False)

    def resolve(self, value: Any) -> Any:
        if isinstance(value, dict):
            if len(value) == 1:
                ((key, argument),) = value.items()
                function = self._FUNCTIONS.get(key)
                if function is not None:
                    return function(self, argument)
                if key.startswith("Fn::"):
                    raise TemplateError(f"{key} is not supported locally")
            resolved = {key: self.resolve(item) for key, item in value.items()}
            return {key: item for key, item in resolved.items() if item is not NO_VALUE}
        if isinstance(value, list):
            items = [self.resolve(item) for item in value]
            return [item for item in items if item is not NO_VALUE]
        return value

    def condition(self, name: str) -> bool:
        """The value of a named condition of the template's Conditions section."""
        if name not in self._conditions:
            conditions = self.template.get("Conditions") or {}
            if name not in conditions:
                raise TemplateError(f"unknown condition {name}")
            self._conditions[name] = self._truth(conditions[name])
        return self._conditions[name]

    # -- intrinsic functions

    def _truth(self, value: Any) -> bool:
        if isinstance(value, dict) and set(value) == {"Condition"}:
            return self.condition(str(value["Condition"]))
        result = self.resolve(value)
        if isinstance(result, bool):
            return result
        if isinstance(result, str) and result.lower() in ("true", "false"):
            return result.lower() == "true"
        raise TemplateError(f"condition {value!r} is not a boolean")

    def _ref(self, name: Any) -> Any:
        name = str(self.resolve(name))
        if name in self.parameters:
            return self.parameters[name]
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.physical:
            return self.physical[name]["Ref"]
        if name in (self.template.get("Resources") or {}):
            return name
        raise TemplateError(f"Ref to unknown name {name}")

    def _get_att(self, argument: Any) -> Any:
        if isinstance(argument, str):
            argument = argument.split(".", 1)
        logical_id, attribute = str(argument[0]), str(self.resolve(argument[1]))
        attributes = self.physical.get(logical_id)
        if attributes is None or attribute not in attributes:
            raise TemplateError(
                f"GetAtt {logical_id}.{attribute}: not a created resource attribute"
            )
        return attributes[attribute]

    def _sub(self, argument: Any) -> str:
        if isinstance(argument, list):
            text, variables = argument[0], self.resolve(argument[1])
        else:
            text, variables = argument, {}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                value = variables[name]
            elif "." in name and not name.startswith("AWS::"):
                value = self._get_att(name.split(".", 1))
            else:
                value = self._ref(name)
            return _scalar_string(value)

        return _SUB_VARIABLE.sub(replace, str(text))

    def _join(self, argument: Any) -> str:
        delimiter, items = argument[0], self.resolve(argument[1])
        if not isinstance(items, list):
            raise TemplateError(f"Fn::Join needs a list, got {items!r}")
        return str(delimiter).join(_scalar_string(item) for item in items)

    def _select(self, argument: Any) -> Any:
        index, items = int(self.resolve(argument[0])), self.resolve(argument[1])
        if not isinstance(items, list) or not 0 <= index < len(items):
            raise TemplateError(f"Fn::Select index {index} out of {items!r}")
        return items[index]

    def _split(self, argument: Any) -> list[str]:
        return str(self.resolve(argument[1])).split(str(argument[0]))

    def _if(self, argument: Any) -> Any:
        name, when_true, when_false = argument
        return self.resolve(when_true if self.condition(str(name)) else when_false)

    def _equals(self, argument: Any) -> bool:
        left, right = (self.resolve(item) for item in argument)
        if isinstance(left, list | dict) or isinstance(right, list | dict):
            return bool(left == right)
        return _scalar_string(left) == _scalar_string(right)

    def _not(self, argument: Any) -> bool:
        return not self._truth(argument[0])

    def _and(self, argument: Any) -> bool:
        return all(self._truth(item) for item in argument)

    def _or(self, argument: Any) -> bool:
        return any(self._truth(item) for item in argument)

    def _find_in_map(self, argument: Any) -> Any:
        name, top, second = (str(self.resolve(item)) for item in argument[:3])
        try:
            return self.resolve(self.template["Mappings"][name][top][second])
        except KeyError:
            raise TemplateError(f"Fn::FindInMap {name}/{top}/{second} not found") from None

    def _base64(self, argument: Any) -> str:
        return base64.b64encode(str(self.resolve(argument)).encode()).decode()

    def _get_azs(self, argument: Any) -> list[str]:
        region = str(self.resolve(argument)) or str(self.pseudo["AWS::Region"])
        return [f"{region}{zone}" for zone in "abc"]

    def _import_value(self, argument: Any) -> Any:
        raise TemplateError(f"Fn::ImportValue {argument!r}: other stacks do not exist locally")

    _FUNCTIONS: ClassVar[Mapping[str, Callable[[Resolver, Any], Any]]] = {
        "Ref": _ref,
        "Fn::GetAtt": _get_att,
        "Fn::Sub": _sub,
        "Fn::Join": _join,
        "Fn::Select": _select,
        "Fn::Split": _split,
        "Fn::If": _if,
        "Fn::Equals": _equals,
        "Fn::Not": _not,
        "Fn::And": _and,
        "Fn::Or": _or,
        "Fn::FindInMap": _find_in_map,
        "Fn::Base64": _base64,
        "Fn::GetAZs": _get_azs,
        "Fn::ImportValue": _import_value,
    }


def _scalar_string(value: Any) -> str:
    """A scalar as CloudFormation renders it in a string (booleans in lower case)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise TemplateError(f"{value!r} is not a scalar")


def references(value: Any) -> set[str]:
    """Logical ids and parameter names a value refers to (Ref, GetAtt, Sub variables)."""
    found: set[str] = set()
    if isinstance(value, dict):
        if set(value) == {"Ref"} and isinstance(value["Ref"], str):
            found.add(value["Ref"])
        elif set(value) == {"Fn::GetAtt"}:
            target = value["Fn::GetAtt"]
            found.add(target.split(".", 1)[0] if isinstance(target, str) else str(target[0]))
        elif set(value) == {"Fn::Sub"}:
            argument = value["Fn::Sub"]
            text, variables = argument if isinstance(argument, list) else (argument, {})
            for name in _SUB_VARIABLE.findall(str(text)):
                if not name.startswith("!") and name not in variables:
                    found.add(name.split(".", 1)[0])
            found |= references(variables)
        else:
            for item in value.values():
                found |= references(item)
    elif isinstance(value, list):
        for item in value:
            found |= references(item)
    return found


# ---------------------------------------------------------------------------- schedules

_RATE = re.compile(r"rate\((\d+) (minute|minutes|hour|hours|day|days)\)")
_RATE_SECONDS = {"minute": 60, "hour": 3600, "day": 86_400}
_CRON = re.compile(r"cron\(([^)]*)\)")
_MONTH_NAMES = {
    name: number
    for number, name in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), 1
    )
}
_DAY_NAMES = {
    name: number for number, name in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"), 1)
}


def next_fire_interval(expression: str) -> float:
    """Seconds between firings of a `rate(...)` expression (`rate(5 minutes)` -> 300.0).

    EventBridge wants the singular unit for 1 and the plural otherwise; so does this.
    """
    match = _RATE.fullmatch(expression.strip())
    if match is None:
        raise TemplateError(f"{expression!r} is not rate(N unit); use cron_next for cron()")
    count, unit = int(match.group(1)), match.group(2)
    if count < 1 or (count == 1) == unit.endswith("s"):
        raise TemplateError(f"{expression!r}: use 'rate(1 minute)' or 'rate(N minutes)', N >= 1")
    return float(count * _RATE_SECONDS[unit.rstrip("s")])


@dataclass(frozen=True)
class CronSchedule:
    """A parsed 6-field EventBridge cron: minutes hours day-of-month month day-of-week year.

    `days_of_month` / `days_of_week` is None where the expression says `?`. Days of week
    are numbered like EventBridge: 1 = SUN ... 7 = SAT.
    """

    minutes: frozenset[int]
    hours: frozenset[int]
    days_of_month: frozenset[int] | None
    months: frozenset[int]
    days_of_week: frozenset[int] | None
    years: frozenset[int]

    def day_matches(self, day: datetime) -> bool:
        weekday = (day.weekday() + 1) % 7 + 1  # Monday is 0 in Python, 2 in EventBridge
        return (self.days_of_month is None or day.day in self.days_of_month) and (
            self.days_of_week is None or weekday in self.days_of_week
        )


def parse_cron(expression: str) -> CronSchedule:
    """Parse `cron(min hour dom month dow year)`: numbers, names, *, ?, lists, ranges, steps."""
    match = _CRON.fullmatch(expression.strip())
    if match is None:
        raise TemplateError(f"{expression!r} is not cron(...)")
    fields = match.group(1).split()
    if len(fields) != 6:
        raise TemplateError(f"{expression!r}: EventBridge cron has 6 fields, not {len(fields)}")
    minute, hour, day_of_month, month, day_of_week, year = fields
    if (day_of_month == "?") == (day_of_week == "?"):
        raise TemplateError(f"{expression!r}: exactly one of day-of-month, day-of-week is '?'")
    return CronSchedule(
        minutes=_cron_field(minute, 0, 59, {}),
        hours=_cron_field(hour, 0, 23, {}),
        days_of_month=None if day_of_month == "?" else _cron_field(day_of_month, 1, 31, {}),
        months=_cron_field(month, 1, 12, _MONTH_NAMES),
        days_of_week=None if day_of_week == "?" else _cron_field(day_of_week, 1, 7, _DAY_NAMES),
        years=_cron_field(year, 1970, 2199, {}),
    )


def _cron_field(text: str, low: int, high: int, names: Mapping[str, int]) -> frozenset[int]:
    def number(token: str) -> int:
        token = token.upper()
        if token in names:
            return names[token]
        if not token.isdigit():
            raise TemplateError(f"cron field {text!r}: {token!r} is not a number")
        return int(token)

    values: set[int] = set()
    for part in text.split(","):
        base, slash, step_text = part.partition("/")
        step = number(step_text) if slash else 1
        if base == "*":
            first, last = low, high
        elif "-" in base:
            start, _, end = base.partition("-")
            first, last = number(start), number(end)
        else:
            first = number(base)
            last = high if slash else first
        if step < 1 or not low <= first <= last <= high:
            raise TemplateError(f"cron field {text!r} is outside {low}-{high} or malformed")
        values.update(range(first, last + 1, step))
    return frozenset(values)


def cron_next(expression: str, after: datetime) -> datetime:
    """The first firing of a cron() expression strictly after `after` (UTC; naive is UTC)."""
    cron = parse_cron(expression)
    moment = after.replace(tzinfo=UTC) if after.tzinfo is None else after.astimezone(UTC)
    moment = moment.replace(second=0, microsecond=0) + timedelta(minutes=1)
    last_year = max(cron.years)
    while moment.year <= last_year:
        if moment.year not in cron.years:
            moment = datetime(moment.year + 1, 1, 1, tzinfo=UTC)
        elif moment.month not in cron.months:
            year, month = divmod(moment.year * 12 + moment.month, 12)  # month is now 0-based
            moment = datetime(year, month + 1, 1, tzinfo=UTC)
        elif not cron.day_matches(moment):
            moment = (moment + timedelta(days=1)).replace(hour=0, minute=0)
        elif moment.hour not in cron.hours:
            moment = (moment + timedelta(hours=1)).replace(minute=0)
        elif moment.minute not in cron.minutes:
            moment += timedelta(minutes=1)
        else:
            return moment
    raise TemplateError(f"{expression!r} never fires after {after.isoformat()}")


def validate_schedule_expression(expression: str) -> None:
    """Raise TemplateError unless `expression` is a valid rate(...) or 6-field cron(...)."""
    if expression.strip().startswith("rate("):
        next_fire_interval(expression)
    else:
        parse_cron(expression)


def next_fire_time(expression: str, after: datetime) -> datetime:
    """The next firing after `after` for either kind of expression (aware UTC)."""
    if expression.strip().startswith("rate("):
        moment = after.replace(tzinfo=UTC) if after.tzinfo is None else after
        return moment + timedelta(seconds=next_fire_interval(expression))
    return cron_next(expression, after)


def scheduled_event(rule_arn: str, time: datetime) -> dict[str, Any]:
    """The event EventBridge sends a Lambda function for a schedule rule firing at `time`."""
    parts = rule_arn.split(":", 5)
    if len(parts) != 6 or parts[2] != "events":
        raise TemplateError(f"{rule_arn!r} is not an EventBridge rule ARN")
    moment = time.replace(tzinfo=UTC) if time.tzinfo is None else time.astimezone(UTC)
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": parts[4],
        "time": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": parts[3],
        "resources": [rule_arn],
        "detail": {},
    }


# ---------------------------------------------------------------------------- the stack


@dataclass(frozen=True)
class FunctionSpec:
    logical_id: str
    code_uri: Path
    handler: str  # "module.attribute", e.g. "handler.handler"
    timeout: int  # seconds
    memory: int  # MB
    runtime: str
    layers: tuple[Path, ...]  # ContentUri of this template's layers the function uses


@dataclass(frozen=True)
class SqsEventSource:
    function_logical_id: str
    event_id: str
    queue_logical_id: str
    queue_url: str
    queue_arn: str
    batch_size: int
    maximum_batching_window_seconds: int
    report_batch_item_failures: bool
    maximum_concurrency: int | None
    visibility_timeout: int  # the queue's, in seconds
    enabled: bool


@dataclass(frozen=True)
class ScheduleSpec:
    function_logical_id: str
    event_id: str
    expression: str
    input: Any  # the template's Input if any, else a Scheduled Event body (made when listed)
    enabled: bool
    rule_arn: str
    fixed_input: bool  # True when `input` comes from the template

    def event_at(self, time: datetime) -> Any:
        """What a firing at `time` sends: the template's Input, or a fresh Scheduled Event."""
        return self.input if self.fixed_input else scheduled_event(self.rule_arn, time)

    def next_fire(self, after: datetime) -> datetime:
        return next_fire_time(self.expression, after)


class HttpRoute(NamedTuple):
    method: str  # upper case; "ANY" for any method
    path: str  # as in the template, e.g. "/leads/{id}"
    authorizer: str | None  # authorizer name, None for a public route


@dataclass(frozen=True)
class JwtAuthorizer:
    name: str
    issuer: str
    audiences: tuple[str, ...]
    identity_source: str


@dataclass
class Provisioned:
    """The template with its parameters, plus the physical ids of what was created.

    Build it with `provision`; tests may construct it directly (with `physical` as they
    need it) since nothing here talks to AWS.
    """

    template: dict[str, Any]
    parameters: dict[str, Any]
    region: str = DEFAULT_REGION
    account_id: str = LOCAL_ACCOUNT_ID
    stack_name: str = LOCAL_STACK_NAME
    physical: dict[str, dict[str, Any]] = field(default_factory=dict)
    base_dir: Path = REPO

    @property
    def resolver(self) -> Resolver:
        pseudo = pseudo_parameters(
            region=self.region, account_id=self.account_id, stack_name=self.stack_name
        )
        return Resolver(self.template, self.parameters, pseudo, self.physical)

    def resolve(self, value: Any) -> Any:
        return self.resolver.resolve(value)

    def condition(self, name: str) -> bool:
        return self.resolver.condition(name)

    def resources(self, *types: str) -> dict[str, dict[str, Any]]:
        """Resources of the given types (all if none) whose Condition holds, in template order."""
        resolver = self.resolver
        return {
            logical_id: resource
            for logical_id, resource in (self.template.get("Resources") or {}).items()
            if (not types or resource.get("Type") in types)
            and ("Condition" not in resource or resolver.condition(resource["Condition"]))
        }

    def function_properties(self, logical_id: str) -> dict[str, Any]:
        """A SAM function's Properties merged onto Globals.Function (unresolved)."""
        resource = self.template["Resources"][logical_id]
        if resource.get("Type") != "AWS::Serverless::Function":
            raise TemplateError(f"{logical_id} is not an AWS::Serverless::Function")
        defaults = (self.template.get("Globals") or {}).get("Function") or {}
        return cast(dict[str, Any], _merge_globals(defaults, resource.get("Properties") or {}))

    def function_environment(self, logical_id: str) -> dict[str, str]:
        """Environment variables as Lambda would see them (Globals merged, values resolved)."""
        environment = self.function_properties(logical_id).get("Environment") or {}
        variables = self.resolve(environment.get("Variables") or {})
        if not isinstance(variables, dict):
            raise TemplateError(f"{logical_id}: Environment.Variables is not a map")
        return {name: _scalar_string(value) for name, value in variables.items()}

    def functions(self) -> list[FunctionSpec]:
        layers = self.resources("AWS::Serverless::LayerVersion")
        specs = []
        for logical_id in self.resources("AWS::Serverless::Function"):
            properties = self.function_properties(logical_id)
            code_uri = self.resolve(properties.get("CodeUri"))
            if not isinstance(code_uri, str):
                raise TemplateError(f"{logical_id}: CodeUri must be a local folder")
            layer_dirs = tuple(
                self.base_dir / str(self.resolve(layers[layer["Ref"]]["Properties"]["ContentUri"]))
                for layer in properties.get("Layers") or []
                if isinstance(layer, dict) and layer.get("Ref") in layers
            )
            specs.append(
                FunctionSpec(
                    logical_id=logical_id,
                    code_uri=self.base_dir / code_uri,
                    handler=str(self.resolve(properties.get("Handler"))),
                    timeout=int(self.resolve(properties.get("Timeout", 3))),
                    memory=int(self.resolve(properties.get("MemorySize", 128))),
                    runtime=str(self.resolve(properties.get("Runtime"))),
                    layers=layer_dirs,
                )
            )
        return specs

    def _events(self, *types: str) -> Iterable[tuple[str, str, dict[str, Any]]]:
        for logical_id in self.resources("AWS::Serverless::Function"):
            events = self.function_properties(logical_id).get("Events") or {}
            for event_id, event in events.items():
                if event.get("Type") in types:
                    yield logical_id, event_id, event.get("Properties") or {}

    def sqs_event_sources(self) -> list[SqsEventSource]:
        """Each SQS event of a function, with the queue's URL (needs provisioned queues)."""
        sources = []
        for function_id, event_id, properties in self._events("SQS"):
            queue_id = self._queue_logical_id(properties["Queue"])
            queue = self.physical[queue_id]
            queue_properties = self.template["Resources"][queue_id].get("Properties") or {}
            scaling = self.resolve(properties.get("ScalingConfig") or {})
            response_types = self.resolve(properties.get("FunctionResponseTypes") or [])
            concurrency = scaling.get("MaximumConcurrency")
            sources.append(
                SqsEventSource(
                    function_logical_id=function_id,
                    event_id=event_id,
                    queue_logical_id=queue_id,
                    queue_url=str(queue["QueueUrl"]),
                    queue_arn=str(queue["Arn"]),
                    batch_size=int(self.resolve(properties.get("BatchSize", 10))),
                    maximum_batching_window_seconds=int(
                        self.resolve(properties.get("MaximumBatchingWindowInSeconds", 0))
                    ),
                    report_batch_item_failures="ReportBatchItemFailures" in response_types,
                    maximum_concurrency=None if concurrency is None else int(concurrency),
                    visibility_timeout=int(
                        self.resolve(queue_properties.get("VisibilityTimeout", 30))
                    ),
                    enabled=_truthy(self.resolve(properties.get("Enabled", True))),
                )
            )
        return sources

    def _queue_logical_id(self, queue: Any) -> str:
        if isinstance(queue, dict) and set(queue) == {"Fn::GetAtt"}:
            target = queue["Fn::GetAtt"]
            logical_id = target.split(".", 1)[0] if isinstance(target, str) else str(target[0])
            if logical_id in self.physical:
                return logical_id
        arn = self.resolve(queue)
        for logical_id, attributes in self.physical.items():
            if attributes.get("Arn") == arn and "QueueUrl" in attributes:
                return logical_id
        raise TemplateError(f"SQS event queue {queue!r} is not a provisioned queue")

    def schedules(self) -> list[ScheduleSpec]:
        """Each Schedule / ScheduleV2 event of a function."""
        specs = []
        now = datetime.now(UTC)
        for function_id, event_id, properties in self._events("Schedule", "ScheduleV2"):
            # Only what the runtime uses: DeadLetterConfig and the like may name SAM's own
            # resources, which do not exist locally.
            resolved = self.resolve({k: v for k, v in properties.items() if k in _SCHEDULE_KEYS})
            v2 = "ScheduleExpression" in resolved
            expression = str(resolved["ScheduleExpression" if v2 else "Schedule"])
            validate_schedule_expression(expression)
            name = str(resolved.get("Name") or f"{self.stack_name}-{function_id}{event_id}")
            if v2:
                arn = f"arn:{PARTITION}:scheduler:{self.region}:{self.account_id}:schedule/"
                rule_arn = arn + f"{resolved.get('GroupName', 'default')}/{name}"
            else:
                rule_arn = f"arn:{PARTITION}:events:{self.region}:{self.account_id}:rule/{name}"
            enabled = _truthy(resolved.get("Enabled", True)) and (
                str(resolved.get("State", "ENABLED")).upper() == "ENABLED"
            )
            fixed = "Input" in resolved or v2  # Scheduler sends its Input or {}, no envelope
            payload = json.loads(resolved.get("Input", "{}")) if fixed else None
            specs.append(
                ScheduleSpec(
                    function_logical_id=function_id,
                    event_id=event_id,
                    expression=expression,
                    input=payload if fixed else scheduled_event(rule_arn, now),
                    enabled=enabled,
                    rule_arn=rule_arn,
                    fixed_input=fixed,
                )
            )
        return specs

    def http_routes(self, function_logical_id: str | None = None) -> list[HttpRoute]:
        """(method, path, authorizer) of each HttpApi event, of one function if given."""
        routes = []
        for function_id, _, properties in self._events("HttpApi"):
            if function_logical_id is not None and function_id != function_logical_id:
                continue
            resolved = self.resolve({k: v for k, v in properties.items() if k in _ROUTE_KEYS})
            authorizer = (resolved.get("Auth") or {}).get("Authorizer")
            if authorizer is None:
                authorizer = (self._http_api_auth(properties.get("ApiId"))).get("DefaultAuthorizer")
            routes.append(
                HttpRoute(
                    method=str(resolved.get("Method", "ANY")).upper(),
                    path=str(resolved.get("Path", "$default")),
                    authorizer=None if authorizer in (None, "NONE") else str(authorizer),
                )
            )
        return routes

    def jwt_authorizers(self) -> dict[str, JwtAuthorizer]:
        """The JWT authorizers of every HttpApi (issuer and audiences resolved)."""
        found = {}
        apis = self.resources("AWS::Serverless::HttpApi")
        auths = [self._http_api_auth({"Ref": api_id}) for api_id in apis]
        if not apis:
            auths.append(self._http_api_auth(None))
        for auth in auths:
            for name, authorizer in (auth.get("Authorizers") or {}).items():
                config = authorizer.get("JwtConfiguration")
                if not config:
                    continue
                audience = config.get("audience") or []
                found[name] = JwtAuthorizer(
                    name=name,
                    issuer=str(config.get("issuer", "")),
                    audiences=tuple(
                        str(a) for a in (audience if isinstance(audience, list) else [audience])
                    ),
                    identity_source=str(
                        authorizer.get("IdentitySource", "$request.header.Authorization")
                    ),
                )
        return found

    def _http_api_auth(self, api_id: Any) -> dict[str, Any]:
        if isinstance(api_id, dict) and "Ref" in api_id:
            resource = self.template["Resources"][api_id["Ref"]]
            auth = (resource.get("Properties") or {}).get("Auth") or {}
        else:  # the implicit API takes its settings from Globals.HttpApi
            auth = ((self.template.get("Globals") or {}).get("HttpApi") or {}).get("Auth") or {}
        return cast(dict[str, Any], self.resolve(auth))


_SCHEDULE_KEYS = (
    "Schedule",
    "ScheduleExpression",
    "Input",
    "Enabled",
    "State",
    "Name",
    "GroupName",
)
_ROUTE_KEYS = ("Method", "Path", "Auth")


def _merge_globals(defaults: Any, own: Any) -> Any:
    """SAM's Globals rule: maps merge (the function wins), lists concatenate, else the function."""
    if _is_intrinsic(defaults) or _is_intrinsic(own):
        return own
    if isinstance(defaults, dict) and isinstance(own, dict):
        merged = dict(defaults)
        for key, value in own.items():
            merged[key] = _merge_globals(defaults[key], value) if key in defaults else value
        return merged
    if isinstance(defaults, list) and isinstance(own, list):
        return defaults + own
    return own


def _is_intrinsic(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and len(value) == 1
        and next(iter(value)).startswith(("Fn::", "Ref"))
    )


def _truthy(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).lower() == "true"


# ---------------------------------------------------------------------------- provisioning


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
    server (endpoint_url its URL). Running it twice reuses what exists. Schedule rules
    are not created (the local runtime fires schedules); functions, APIs, alarms and
    log groups have no local counterpart. The SES identity of the SenderEmail
    parameter, if the template has one, is verified so the worker can send.
    """
    stack = Provisioned(
        template=template,
        parameters=parameter_values(template, parameter_overrides),
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
