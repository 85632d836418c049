"""The stack: a template with its parameters and the physical ids of what was created,
answering the runtime's questions (functions, environments, event sources, schedules,
routes, authorizers) from template.yaml alone."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, cast

from local.template.errors import TemplateError
from local.template.intrinsics import (
    DEFAULT_REGION,
    LOCAL_ACCOUNT_ID,
    LOCAL_STACK_NAME,
    PARTITION,
    Resolver,
    _scalar_string,
    pseudo_parameters,
)
from local.template.loader import REPO
from local.template.schedules import next_fire_time, scheduled_event, validate_schedule_expression


@dataclass(frozen=True)
class FunctionSpec:
    logical_id: str
    code_uri: Path
    handler: str  # "module.attribute", e.g. "handler.handler"
    timeout: int  # seconds
    memory: int  # MB
    runtime: str
    layers: tuple[Path, ...]  # ContentUri of this template's layers the function uses
    reserved_concurrency: int | None = None  # ReservedConcurrentExecutions, if set


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
                    reserved_concurrency=_optional_int(
                        self.resolve(properties.get("ReservedConcurrentExecutions"))
                    ),
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


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _truthy(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).lower() == "true"
