"""Production promises of template.yaml, checked on SAM's transform (what CloudFormation is
given): every function that reaches the database runs in the private subnets, the
database is private behind a TLS-only proxy, the connection budget holds for every
budget, and the schema is migrated before the functions that need it.

Each check returns its problems and is run on a broken copy too, so the check itself is
proven to catch what it claims to.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from local.template import references

Template = dict[str, Any]
CREATE = "CreateInfrastructure"


def functions(template: Template) -> dict[str, dict[str, Any]]:
    return {
        logical_id: resource["Properties"]
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Lambda::Function"
    }


def reaches_database(properties: dict[str, Any]) -> bool:
    """Its environment names the database (the secret, or a URL; an empty value names none)."""
    variables = (properties.get("Environment") or {}).get("Variables") or {}
    return bool(variables.get("DATABASE_SECRET_ARN") or variables.get("DATABASE_URL"))


def branch(value: Any, condition: str, which: bool) -> Any:
    """One side of {"Fn::If": [condition, then, else]}; anything else as it is."""
    if isinstance(value, dict) and set(value) == {"Fn::If"} and value["Fn::If"][0] == condition:
        return value["Fn::If"][1 if which else 2]
    return value


def budget_values(template: Template, value: Any) -> dict[str, Any]:
    """The value under each connection budget (a FindInMap into ConnectionBudget)."""
    budgets = template["Parameters"]["DatabaseConnectionBudget"]["AllowedValues"]
    if isinstance(value, dict) and set(value) == {"Fn::FindInMap"}:
        name, top, key = value["Fn::FindInMap"]
        if name == "ConnectionBudget" and top == {"Ref": "DatabaseConnectionBudget"}:
            return {b: template["Mappings"][name][b].get(key) for b in budgets}
    return dict.fromkeys(budgets, value)


def _ref(value: Any) -> str | None:
    if isinstance(value, dict) and set(value) == {"Ref"}:
        return str(value["Ref"])
    if isinstance(value, dict) and set(value) == {"Fn::GetAtt"}:
        target = value["Fn::GetAtt"]
        return str(target[0] if isinstance(target, list) else target.split(".")[0])
    return None


# ---------------------------------------------------------------- checks


def private_subnets(template: Template) -> set[str]:
    """Subnets whose route table sends nothing to an internet gateway."""
    resources = template["Resources"]
    public_tables = {
        _ref(r["Properties"]["RouteTableId"])
        for r in resources.values()
        if r["Type"] == "AWS::EC2::Route" and "GatewayId" in r["Properties"]
    }
    private = set()
    for association in resources.values():
        if association["Type"] != "AWS::EC2::SubnetRouteTableAssociation":
            continue
        props = association["Properties"]
        subnet = _ref(props["SubnetId"])
        if _ref(props["RouteTableId"]) not in public_tables and subnet is not None:
            subnet_props = resources[subnet]["Properties"]
            if not subnet_props.get("MapPublicIpOnLaunch", False):
                private.add(subnet)
    return private


def vpc_problems(template: Template) -> list[str]:
    """Every function that reaches the database is in the private subnets (stack-created)
    or the subnets and security groups given (existing)."""
    problems = []
    private = private_subnets(template)
    for function_id, props in functions(template).items():
        if not reaches_database(props):
            continue
        vpc = props.get("VpcConfig")
        if not vpc:
            problems.append(f"{function_id} reaches the database but has no VpcConfig")
            continue
        subnets = branch(vpc.get("SubnetIds"), CREATE, True)
        names = {_ref(s) for s in subnets} if isinstance(subnets, list) else {None}
        if not names or not names <= private:
            problems.append(f"{function_id}: subnets {sorted(map(str, names))} are not private")
        if len(names) < 2:
            problems.append(f"{function_id}: fewer than two subnets (zones)")
        existing = branch(vpc.get("SubnetIds"), CREATE, False)
        if existing != {"Ref": "ExistingSubnetIds"}:
            problems.append(
                f"{function_id}: Infrastructure existing does not use ExistingSubnetIds"
            )
        groups = branch(vpc.get("SecurityGroupIds"), CREATE, True)
        if groups != [{"Ref": "FunctionSecurityGroup"}]:
            problems.append(f"{function_id}: not in FunctionSecurityGroup")
    return problems


def database_problems(template: Template) -> list[str]:
    """The database is private, encrypted and reached only through a TLS-only proxy, with
    verify-full on the functions' side."""
    problems = []
    resources = template["Resources"]
    by_type: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for logical_id, resource in resources.items():
        by_type.setdefault(resource["Type"], []).append(
            (logical_id, resource.get("Properties", {}))
        )
    for logical_id, props in by_type.get("AWS::RDS::DBInstance", []):
        if props.get("PubliclyAccessible") is not False:
            problems.append(f"{logical_id}: PubliclyAccessible is not false")
    for logical_id, props in by_type.get("AWS::RDS::DBCluster", []):
        if props.get("StorageEncrypted") is not True:
            problems.append(f"{logical_id}: not encrypted")
        if props.get("ManageMasterUserPassword") is not True:
            problems.append(f"{logical_id}: master password not managed by RDS")
        if props.get("DeletionProtection") != {"Fn::If": ["IsProd", True, False]}:
            problems.append(f"{logical_id}: no deletion protection in prod")
        for group in props.get("VpcSecurityGroupIds", []):
            ingress = [
                p
                for _, p in by_type.get("AWS::EC2::SecurityGroupIngress", [])
                if _ref(p.get("GroupId")) == _ref(group)
            ] + resources[_ref(group)]["Properties"].get("SecurityGroupIngress", [])
            sources = {_ref(rule.get("SourceSecurityGroupId")) for rule in ingress}
            if any("CidrIp" in rule or "CidrIpv6" in rule for rule in ingress):
                problems.append(f"{logical_id}: {_ref(group)} accepts addresses, not the proxy")
            if sources - {"ProxySecurityGroup"}:
                problems.append(f"{logical_id}: {_ref(group)} accepts {sorted(map(str, sources))}")
    proxies = by_type.get("AWS::RDS::DBProxy", [])
    if not proxies:
        problems.append("no RDS Proxy")
    for logical_id, props in proxies:
        if props.get("RequireTLS") is not True:
            problems.append(f"{logical_id}: RequireTLS is not true")
    for function_id, props in functions(template).items():
        if not reaches_database(props):
            continue
        variables = props["Environment"]["Variables"]
        if variables.get("DB_SSLMODE") != "verify-full":
            problems.append(f"{function_id}: DB_SSLMODE is not verify-full")
        if variables.get("DB_STARTUP_OPTIONS") != "false":
            problems.append(f"{function_id}: sends startup options (RDS Proxy refuses them)")
        host = branch(variables.get("DATABASE_HOST"), CREATE, True)
        if host != {"Fn::GetAtt": ["DatabaseProxy", "Endpoint"]}:
            problems.append(f"{function_id}: does not connect through DatabaseProxy")
    return problems


def budget_problems(template: Template) -> list[str]:
    """For every DatabaseConnectionBudget, the connections the functions can hold stay
    inside it.

    A function holds one writer connection per execution environment. A worker or a
    schedule is capped by its reserved concurrency (and its queue's MaximumConcurrency,
    which must not exceed it), so its share is that. An HTTP function may run more
    environments than its share (ApiCeiling): the database refuses connections past its
    CONNECTION LIMIT, which the migrations resource sets to the budget, and the function
    answers 503 + Retry-After instead of Lambda throttling it into API Gateway's 500. The
    shares of a budget's row add up to at most the budget.
    """
    problems = []
    rows = template["Mappings"]["ConnectionBudget"]
    limited_by_database = False
    for resource in template["Resources"].values():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::CloudFormation::CustomResource" and props.get(
            "ConnectionLimit"
        ) == {"Ref": "DatabaseConnectionBudget"}:
            limited_by_database = True
    # A function invoked through its alias (AutoPublishAlias) is named by the alias.
    alias_of = {
        alias_id: _ref(r["Properties"].get("FunctionName"))
        for alias_id, r in template["Resources"].items()
        if r["Type"] == "AWS::Lambda::Alias"
    }
    http = {
        alias_of.get(name, name)
        for r in template["Resources"].values()
        if r["Type"] == "AWS::Lambda::Permission"
        and r["Properties"].get("Principal") == "apigateway.amazonaws.com"
        for name in [_ref(r["Properties"].get("FunctionName"))]
    }
    mappings = {}
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::Lambda::EventSourceMapping":
            props = resource["Properties"]
            maximum = (props.get("ScalingConfig") or {}).get("MaximumConcurrency")
            mappings.setdefault(_ref(props["FunctionName"]), []).append(maximum)
    totals = dict.fromkeys(rows, 0)
    for function_id, props in functions(template).items():
        if not reaches_database(props):
            continue
        reserved = props.get("ReservedConcurrentExecutions")
        if reserved is None:
            problems.append(f"{function_id} reaches the database with no reserved concurrency")
            continue
        for budget, cap in budget_values(template, reserved).items():
            share = rows[budget].get(function_id)
            if share is None:
                problems.append(f"{function_id} has no share in ConnectionBudget {budget}")
                continue
            if cap > share and not (function_id in http and limited_by_database):
                problems.append(
                    f"{function_id}: {cap} environments hold more than its share {share}"
                    f" of budget {budget}"
                )
            for maximum in mappings.get(function_id, []):
                if budget_values(template, maximum)[budget] > cap:
                    problems.append(f"{function_id}: MaximumConcurrency above its reservation")
            totals[budget] += min(cap, share)
    for budget, total in totals.items():
        if total > int(budget):
            problems.append(f"budget {budget}: the functions can hold {total} connections")
    return problems


def ordering_problems(template: Template) -> list[str]:
    """The migrations resource runs before every function that reaches the database."""
    problems = []
    resources = template["Resources"]
    migrations = [
        logical_id
        for logical_id, r in resources.items()
        if r["Type"] == "AWS::CloudFormation::CustomResource"
        and _ref(r["Properties"].get("ServiceToken")) == "MigrateFunction"
    ]
    if migrations != ["SchemaMigrations"]:
        return [f"expected one migrations resource, found {migrations}"]
    if "FrontdeskLayer" not in str(resources["SchemaMigrations"]["Properties"].get("Layer")):
        problems.append("SchemaMigrations does not change with the layer")
    for function_id, props in functions(template).items():
        if not reaches_database(props) or function_id == "MigrateFunction":
            continue
        depends = resources[function_id].get("DependsOn") or []
        if "SchemaMigrations" not in (depends if isinstance(depends, list) else [depends]):
            problems.append(f"{function_id} may start before the migrations")
    return problems


# ---------------------------------------------------------------- the real template


def test_every_function_that_reaches_the_database_runs_in_private_subnets(
    transformed: Template,
) -> None:
    assert vpc_problems(transformed) == []
    assert sum(reaches_database(p) for p in functions(transformed).values()) >= 10


def test_the_database_is_private_and_reached_through_a_tls_only_proxy(
    transformed: Template,
) -> None:
    assert database_problems(transformed) == []


def test_the_connection_budget_holds_for_every_budget(transformed: Template) -> None:
    assert budget_problems(transformed) == []


def test_the_schema_is_migrated_before_the_functions_that_need_it(transformed: Template) -> None:
    assert ordering_problems(transformed) == []


# ---------------------------------------------------------------- the checks catch mistakes


def broken(template: Template, change: Callable[[Template], None]) -> Template:
    copied = copy.deepcopy(template)
    change(copied)
    return copied


def test_the_budget_check_catches_a_new_function_without_a_reservation(
    transformed: Template,
) -> None:
    # Given a new function that reaches the database, copied from a schedule without its
    # reservation
    def add(t: Template) -> None:
        new = copy.deepcopy(t["Resources"]["Reminders"])
        del new["Properties"]["ReservedConcurrentExecutions"]
        t["Resources"]["NewWorker"] = new

    # When checked / Then it is named
    assert budget_problems(broken(transformed, add)) == [
        "NewWorker reaches the database with no reserved concurrency"
    ]


def test_the_budget_check_catches_a_function_without_a_share_and_an_overdrawn_budget(
    transformed: Template,
) -> None:
    # Given a new function with a reservation but no row in the budget, and a worker whose
    # share grew past what the smallest budget holds
    def overdraw(t: Template) -> None:
        new = copy.deepcopy(t["Resources"]["Reminders"])
        t["Resources"]["NewWorker"] = new
        new["Properties"]["ReservedConcurrentExecutions"] = {
            "Fn::FindInMap": ["ConnectionBudget", {"Ref": "DatabaseConnectionBudget"}, "NewWorker"]
        }
        t["Mappings"]["ConnectionBudget"]["20"]["NotifyWorker"] = 5

    problems = budget_problems(broken(transformed, overdraw))
    # Then both are named
    assert "NewWorker has no share in ConnectionBudget 20" in problems
    assert "budget 20: the functions can hold 23 connections" in problems


def test_the_budget_check_catches_a_worker_past_its_share_or_the_api_without_the_limit(
    transformed: Template,
) -> None:
    # Given a worker allowed more environments than its share, and no database limit
    def widen(t: Template) -> None:
        t["Resources"]["LlmWorker"]["Properties"]["ReservedConcurrentExecutions"] = 50
        t["Resources"]["SchemaMigrations"]["Properties"].pop("ConnectionLimit")

    problems = budget_problems(broken(transformed, widen))
    # Then the worker is named, and the API's ceiling is no longer covered by the database
    assert "LlmWorker: 50 environments hold more than its share 2 of budget 20" in problems
    assert "ApiFunction: 6 environments hold more than its share 2 of budget 20" in problems


def test_the_network_and_database_checks_catch_what_they_promise(transformed: Template) -> None:
    # Given a function outside the VPC, a public instance, a proxy without TLS, a function
    # that skips certificate checks, and a function that may start before the migrations
    def damage(t: Template) -> None:
        del t["Resources"]["SyncWorker"]["Properties"]["VpcConfig"]
        t["Resources"]["DatabaseWriter"]["Properties"]["PubliclyAccessible"] = True
        t["Resources"]["DatabaseProxy"]["Properties"]["RequireTLS"] = False
        variables = t["Resources"]["NotifyWorker"]["Properties"]["Environment"]["Variables"]
        variables["DB_SSLMODE"] = "require"
        t["Resources"]["Reminders"]["DependsOn"] = []
        t["Resources"]["DatabaseSecurityGroup"]["Properties"]["SecurityGroupIngress"] = [
            {"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432, "CidrIp": "0.0.0.0/0"}
        ]

    damaged = broken(transformed, damage)
    problems = vpc_problems(damaged) + database_problems(damaged) + ordering_problems(damaged)
    # Then each is named
    assert "SyncWorker reaches the database but has no VpcConfig" in problems
    assert "DatabaseWriter: PubliclyAccessible is not false" in problems
    assert "DatabaseProxy: RequireTLS is not true" in problems
    assert "NotifyWorker: DB_SSLMODE is not verify-full" in problems
    assert "Reminders may start before the migrations" in problems
    assert "DatabaseCluster: DatabaseSecurityGroup accepts addresses, not the proxy" in problems


def test_a_public_subnet_is_not_private(transformed: Template) -> None:
    # Given the functions' first subnet routed through the internet gateway
    def expose(t: Template) -> None:
        t["Resources"]["PrivateSubnetARoutes"]["Properties"]["RouteTableId"] = {
            "Ref": "PublicRouteTable"
        }

    # When checked / Then every function is named
    problems = vpc_problems(broken(transformed, expose))
    assert any(p.startswith("ApiFunction: subnets") for p in problems)
    assert "PrivateSubnetA" not in private_subnets(broken(transformed, expose))
    assert references(transformed["Resources"]["ApiFunction"]["Properties"]["VpcConfig"])
