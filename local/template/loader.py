"""Loading: template.yaml read as plain data, CloudFormation short-form tags in long form."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from local.template.errors import TemplateError

REPO = Path(__file__).resolve().parent.parent.parent
TEMPLATE_PATH = REPO / "template.yaml"


class CloudFormationLoader(yaml.SafeLoader):
    """A SafeLoader that reads CloudFormation short-form tags as their long form, and refuses
    a key given twice in one mapping (CloudFormation does; YAML would keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise TemplateError(
                    f"{key!r} is given twice (lines {seen[key].start_mark.line + 1} and"
                    f" {key_node.start_mark.line + 1})"
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


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
    """The template as plain data, short-form tags turned into {"Ref": ...}, {"Fn::...": ...}.

    template.yaml itself is parsed once per process (again only when the file changes);
    every call gets its own deep copy, so callers may change what they get.
    """
    if path == TEMPLATE_PATH:
        stat = path.stat()
        return copy.deepcopy(_parsed_template_yaml(stat.st_mtime_ns, stat.st_size))
    return _parse(path)


@functools.lru_cache(maxsize=1)
def _parsed_template_yaml(mtime_ns: int, size: int) -> dict[str, Any]:
    """template.yaml parsed; the arguments only key the cache. Never hand this out as is."""
    return _parse(TEMPLATE_PATH)


def _parse(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as stream:
        template = yaml.load(stream, Loader=CloudFormationLoader)  # noqa: S506 (SafeLoader subclass)
    if not isinstance(template, dict) or not isinstance(template.get("Resources"), dict):
        raise TemplateError(f"{path} is not a CloudFormation template (no Resources)")
    return template
