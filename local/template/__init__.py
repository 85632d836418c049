"""template.yaml as the local runtime sees it: load, resolve, provision in moto, describe.

Development only, never deployed. The template is the truth: the local runtime, the moto
resources and the infrastructure tests all take functions, queues, schedules and routes
from template.yaml through this package, never from a second list. One module per idea:

- `loader`: `load_template` reads CloudFormation YAML (short-form tags become long-form
  dicts).
- `intrinsics`: `Resolver` evaluates intrinsics against parameters, pseudo parameters,
  Conditions and the physical ids of created resources.
- `schedules`: `next_fire_interval`, `cron_next`, `next_fire_time` and `scheduled_event`
  cover what EventBridge schedules do.
- `stack`: a `Provisioned` stack answers the runtime's questions (`functions`,
  `function_environment`, `sqs_event_sources`, `schedules`, `http_routes`).
- `provision`: `provision` creates the template's queues, buses, rules, keys, aliases and
  secrets in moto (in-process `mock_aws` or a moto server URL), idempotently, verifies the
  SES sender, and returns the `Provisioned` stack.
- `errors`: `TemplateError`, raised by all of them.

Import from `local.template`; the names below are its interface.
"""

from __future__ import annotations

from local.template.errors import TemplateError
from local.template.intrinsics import (
    DEFAULT_REGION,
    LOCAL_ACCOUNT_ID,
    LOCAL_STACK_NAME,
    NO_VALUE,
    PARTITION,
    URL_SUFFIX,
    Resolver,
    parameter_values,
    pseudo_parameters,
    references,
)
from local.template.loader import REPO, TEMPLATE_PATH, CloudFormationLoader, load_template
from local.template.provision import (
    LOCAL_PARAMETERS,
    creation_order,
    generate_secret_string,
    local_parameters,
    provision,
)
from local.template.schedules import (
    CronSchedule,
    cron_next,
    next_fire_interval,
    next_fire_time,
    parse_cron,
    scheduled_event,
    validate_schedule_expression,
)
from local.template.stack import (
    FunctionSpec,
    HttpRoute,
    JwtAuthorizer,
    Provisioned,
    ScheduleSpec,
    SqsEventSource,
)

__all__ = [
    "DEFAULT_REGION",
    "LOCAL_ACCOUNT_ID",
    "LOCAL_PARAMETERS",
    "LOCAL_STACK_NAME",
    "NO_VALUE",
    "PARTITION",
    "REPO",
    "TEMPLATE_PATH",
    "URL_SUFFIX",
    "CloudFormationLoader",
    "CronSchedule",
    "FunctionSpec",
    "HttpRoute",
    "JwtAuthorizer",
    "Provisioned",
    "Resolver",
    "ScheduleSpec",
    "SqsEventSource",
    "TemplateError",
    "creation_order",
    "cron_next",
    "generate_secret_string",
    "load_template",
    "local_parameters",
    "next_fire_interval",
    "next_fire_time",
    "parameter_values",
    "parse_cron",
    "provision",
    "pseudo_parameters",
    "references",
    "scheduled_event",
    "validate_schedule_expression",
]
