"""Resolving: CloudFormation intrinsic functions evaluated against parameters, pseudo
parameters, Conditions and the physical ids of created resources."""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from local.template.errors import TemplateError

LOCAL_STACK_NAME = "frontdesk-local"
LOCAL_ACCOUNT_ID = "123456789012"  # moto's default account
DEFAULT_REGION = "us-east-1"
PARTITION = "aws"
URL_SUFFIX = "amazonaws.com"


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
