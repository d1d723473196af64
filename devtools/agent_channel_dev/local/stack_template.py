"""template.yaml, read as data: the one source of truth for the local stack and the tests.

The local gateway routes frames, and the tests and the local stack create the
table, from what this module reads out of the SAM template, so neither can drift
from what AWS deploys. CloudFormation's short tags (``!Ref``, ``!GetAtt``,
``!Sub``, ...) load as their long forms (``{"Ref": ...}``, ``{"Fn::GetAtt": [...]}``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

TEMPLATE_PATH = Path(__file__).resolve().parents[3] / "template.yaml"
"""The checkout's template.yaml (this file is lib/agent_channel/local/stack_template.py)."""

FUNCTION_TYPE = "AWS::Serverless::Function"
ROUTE_TYPE = "AWS::ApiGatewayV2::Route"
INTEGRATION_TYPE = "AWS::ApiGatewayV2::Integration"
AUTHORIZER_TYPE = "AWS::ApiGatewayV2::Authorizer"
TABLE_TYPE = "AWS::DynamoDB::Table"
SCHEDULE_GROUP_TYPE = "AWS::Scheduler::ScheduleGroup"
PIPE_TYPE = "AWS::Pipes::Pipe"

_SUB_REFERENCE = re.compile(r"\$\{([A-Za-z0-9]+)(?:\.[A-Za-z0-9.]+)?\}")


class TemplateError(ValueError):
    """template.yaml does not have the shape this module reads."""


class _CfnLoader(yaml.SafeLoader):
    """A SafeLoader that reads CloudFormation's short-form intrinsic functions."""


def _intrinsic(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    elif isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    else:  # pragma: no cover - yaml has no other node kinds
        raise TemplateError(f"unexpected node for !{tag_suffix}")
    if tag_suffix in ("Ref", "Condition"):
        return {tag_suffix: value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        resource, _, attribute = value.partition(".")
        value = [resource, attribute]
    return {f"Fn::{tag_suffix}": value}


_CfnLoader.add_multi_constructor("!", _intrinsic)


def load_template_text(text: str) -> dict[str, Any]:
    """Parse a CloudFormation/SAM template (YAML or JSON) with its short tags."""
    document = yaml.load(text, Loader=_CfnLoader)  # noqa: S506 - a SafeLoader subclass
    if not isinstance(document, dict):
        raise TemplateError("a template is a mapping")
    return document


@cache
def _load(path: Path) -> dict[str, Any]:
    return load_template_text(path.read_text(encoding="utf-8"))


def template(path: Path | None = None) -> dict[str, Any]:
    """The parsed template (cached; treat it as read-only)."""
    return _load(path or TEMPLATE_PATH)


def resources(path: Path | None = None) -> dict[str, dict[str, Any]]:
    found = template(path).get("Resources")
    if not isinstance(found, dict):
        raise TemplateError("the template has no Resources")
    return found


def _of_type(kind: str, path: Path | None) -> Iterator[tuple[str, dict[str, Any]]]:
    for logical_id, resource in resources(path).items():
        if isinstance(resource, dict) and resource.get("Type") == kind:
            yield logical_id, resource


def _properties(resource: dict[str, Any]) -> dict[str, Any]:
    properties = resource.get("Properties") or {}
    if not isinstance(properties, dict):
        raise TemplateError("Properties must be a mapping")
    return properties


def referenced_ids(value: Any) -> list[str]:
    """The logical ids an intrinsic value refers to (Ref, GetAtt, ${X} in Sub), in order."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "Ref" and isinstance(inner, str):
                found.append(inner)
            elif key == "Fn::GetAtt":
                target = inner[0] if isinstance(inner, list) else str(inner).split(".")[0]
                found.append(str(target))
            elif key == "Fn::Sub":
                text = inner[0] if isinstance(inner, list) else inner
                found.extend(_SUB_REFERENCE.findall(str(text)))
            else:
                found.extend(referenced_ids(inner))
    elif isinstance(value, list):
        for inner in value:
            found.extend(referenced_ids(inner))
    return [name for name in found if not name.startswith("AWS::")]


def functions(path: Path | None = None) -> dict[str, str]:
    """Function logical id -> folder under ``functions/`` (from its CodeUri)."""
    folders: dict[str, str] = {}
    for logical_id, resource in _of_type(FUNCTION_TYPE, path):
        code_uri = _properties(resource).get("CodeUri")
        if not isinstance(code_uri, str):
            raise TemplateError(f"{logical_id}: CodeUri must be a local folder")
        parts = [part for part in code_uri.strip("/").split("/") if part and part != "."]
        if len(parts) != 2 or parts[0] != "functions":
            raise TemplateError(f"{logical_id}: CodeUri {code_uri!r} is not functions/<folder>/")
        folders[logical_id] = parts[1]
    return folders


def _function_folder(value: Any, path: Path | None) -> str:
    """The folder of the one function a Lambda invocation URI refers to."""
    by_id = functions(path)
    named = [by_id[name] for name in referenced_ids(value) if name in by_id]
    if len(named) != 1:
        raise TemplateError(f"expected one function in {value!r}, found {named}")
    return named[0]


def routes(path: Path | None = None) -> dict[str, str]:
    """Route key -> function folder, through each route's integration."""
    integrations = dict(_of_type(INTEGRATION_TYPE, path))
    mapped: dict[str, str] = {}
    for logical_id, resource in _of_type(ROUTE_TYPE, path):
        properties = _properties(resource)
        route_key = properties.get("RouteKey")
        if not isinstance(route_key, str):
            raise TemplateError(f"{logical_id}: RouteKey must be a literal string")
        targets = [
            name for name in referenced_ids(properties.get("Target")) if name in integrations
        ]
        if len(targets) != 1:
            raise TemplateError(f"{logical_id}: Target must name one integration")
        uri = _properties(integrations[targets[0]]).get("IntegrationUri")
        mapped[route_key] = _function_folder(uri, path)
    return mapped


def authorizer_function(path: Path | None = None) -> str:
    """The folder of the function behind the $connect REQUEST authorizer."""
    authorizers = list(_of_type(AUTHORIZER_TYPE, path))
    if len(authorizers) != 1:
        raise TemplateError(f"expected one authorizer, found {len(authorizers)}")
    _, resource = authorizers[0]
    return _function_folder(_properties(resource).get("AuthorizerUri"), path)


IDEMPOTENCY_TABLE = "IdempotencyTable"
"""The idempotency utility's own table; "the table" is the one other than it."""


def _table(path: Path | None, logical_id: str | None = None) -> dict[str, Any]:
    tables = [
        (name, resource)
        for name, resource in _of_type(TABLE_TYPE, path)
        if ((name == logical_id) if logical_id else (name != IDEMPOTENCY_TABLE))
    ]
    if len(tables) != 1:
        raise TemplateError(f"expected one DynamoDB table, found {len(tables)}")
    return _properties(tables[0][1])


def table_create_kwargs(
    table_name: str, path: Path | None = None, logical_id: str | None = None
) -> dict[str, Any]:
    """The table as boto3's ``create_table`` takes it (keys, attributes, indexes,
    billing, stream): the single table, or the one named ``logical_id``."""
    return create_table_kwargs(table_name, _table(path, logical_id))


def create_table_kwargs(table_name: str, table: dict[str, Any]) -> dict[str, Any]:
    """``create_table`` arguments for the properties of an ``AWS::DynamoDB::Table``."""
    billing_mode = table.get("BillingMode", "PROVISIONED")
    kwargs: dict[str, Any] = {
        "TableName": table_name,
        "AttributeDefinitions": [dict(item) for item in table["AttributeDefinitions"]],
        "KeySchema": [dict(item) for item in table["KeySchema"]],
        "BillingMode": billing_mode,
    }
    indexes: list[dict[str, Any]] = []
    for index in table.get("GlobalSecondaryIndexes") or []:
        shaped: dict[str, Any] = {
            "IndexName": index["IndexName"],
            "KeySchema": [dict(item) for item in index["KeySchema"]],
            "Projection": dict(index["Projection"]),
        }
        if billing_mode == "PROVISIONED" and "ProvisionedThroughput" in index:
            shaped["ProvisionedThroughput"] = dict(index["ProvisionedThroughput"])
        indexes.append(shaped)
    if indexes:
        kwargs["GlobalSecondaryIndexes"] = indexes
    if billing_mode == "PROVISIONED" and "ProvisionedThroughput" in table:
        kwargs["ProvisionedThroughput"] = dict(table["ProvisionedThroughput"])
    stream = table.get("StreamSpecification")
    if stream:
        kwargs["StreamSpecification"] = {
            "StreamEnabled": True,
            "StreamViewType": stream["StreamViewType"],
        }
    return kwargs


def table_ttl_attribute(path: Path | None = None, logical_id: str | None = None) -> str:
    """The TTL attribute of the table ("" when TTL is not enabled)."""
    ttl = _table(path, logical_id).get("TimeToLiveSpecification") or {}
    if not ttl.get("Enabled"):
        return ""
    return str(ttl.get("AttributeName", ""))


def schedule_group_name(default: str, path: Path | None = None) -> str:
    """The grace schedule group's name if the template spells it out literally.

    The deployed name is derived from the stack name (``${AWS::StackName}-grace``),
    which has no local meaning, so ``default`` (the local setting) stands in for it.
    """
    groups = list(_of_type(SCHEDULE_GROUP_TYPE, path))
    if len(groups) != 1:
        raise TemplateError(f"expected one schedule group, found {len(groups)}")
    name = _properties(groups[0][1]).get("Name")
    return name if isinstance(name, str) and name else default


def pipes(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """Pipe logical id -> its Properties, as written in the template."""
    return {logical_id: _properties(resource) for logical_id, resource in _of_type(PIPE_TYPE, path)}
