"""CloudFormation intrinsic functions, resolved for a local stack.

A deployed stack gets physical names and ARNs from CloudFormation; locally they
are derived from the stack name and logical ids, the same way every time, so a
function's ``!Ref Table`` and the table the local stack creates agree. Only the
intrinsics a SAM WebSocket app's environment and resource names use are
supported (Ref, GetAtt, Sub, Join, Select, Split, If on literal conditions is
not); anything else is a TemplateError naming the value, not a silent guess.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from agent_channel_dev.local.stack_template import TemplateError

REGION = "us-east-1"
ACCOUNT = "000000000000"
PARTITION = "aws"
URL_SUFFIX = "amazonaws.com"

_SUB_PLACEHOLDER = re.compile(r"\$\{([^}!][^}]*)\}")

NO_VALUE = object()
"""``!Ref AWS::NoValue``: the property is dropped."""


def api_id_for(stack_name: str, logical_id: str) -> str:
    """Ten lowercase characters, as API Gateway's ids; stable for a stack and API."""
    digest = hashlib.sha256(f"{stack_name}/{logical_id}".encode()).hexdigest()
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(letters[int(digest[i : i + 2], 16) % 36] for i in range(0, 20, 2))


@dataclass
class Resolver:
    """Resolves intrinsic values of one template with local physical names."""

    template: dict[str, Any]
    stack_name: str
    parameters: dict[str, str] = field(default_factory=dict)
    """Parameter overrides (as ``sam deploy --parameter-overrides``)."""

    def __post_init__(self) -> None:
        declared = self.template.get("Parameters") or {}
        unknown = sorted(set(self.parameters) - set(declared))
        if unknown:
            raise TemplateError(f"unknown template parameters: {', '.join(unknown)}")

    @property
    def resources(self) -> dict[str, Any]:
        found = self.template.get("Resources")
        if not isinstance(found, dict):
            raise TemplateError("the template has no Resources")
        return found

    def type_of(self, logical_id: str) -> str:
        resource = self.resources.get(logical_id)
        if not isinstance(resource, dict):
            raise TemplateError(f"no resource or parameter named {logical_id!r}")
        return str(resource.get("Type", ""))

    def parameter(self, name: str) -> str:
        if name in self.parameters:
            return self.parameters[name]
        declared = (self.template.get("Parameters") or {}).get(name)
        if not isinstance(declared, dict) or "Default" not in declared:
            raise TemplateError(f"parameter {name} has no Default: pass it with --parameter")
        return str(declared["Default"])

    def pseudo(self, name: str) -> str:
        values = {
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT,
            "AWS::Partition": PARTITION,
            "AWS::URLSuffix": URL_SUFFIX,
            "AWS::StackName": self.stack_name,
            "AWS::StackId": (
                f"arn:{PARTITION}:cloudformation:{REGION}:{ACCOUNT}:stack/{self.stack_name}/local"
            ),
        }
        if name not in values:
            raise TemplateError(f"{name} is not supported locally")
        return values[name]

    # -- names ---------------------------------------------------------------

    def physical_name(self, logical_id: str) -> str:
        """The name CloudFormation would generate, made stable: ``STACK-LogicalId``,
        or the literal name the template gives the resource."""
        properties = self.resources[logical_id].get("Properties") or {}
        kind = self.type_of(logical_id)
        name_property = {
            "AWS::Serverless::Function": "FunctionName",
            "AWS::Lambda::Function": "FunctionName",
            "AWS::DynamoDB::Table": "TableName",
            "AWS::Serverless::SimpleTable": "TableName",
            "AWS::SQS::Queue": "QueueName",
            "AWS::Events::EventBus": "Name",
            "AWS::Scheduler::ScheduleGroup": "Name",
            "AWS::IAM::Role": "RoleName",
            "AWS::Logs::LogGroup": "LogGroupName",
        }.get(kind)
        if name_property and name_property in properties:
            return str(self.resolve(properties[name_property]))
        return f"{self.stack_name}-{logical_id}"

    def ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        if name.startswith("AWS::"):
            return self.pseudo(name)
        if name in (self.template.get("Parameters") or {}):
            return self.parameter(name)
        kind = self.type_of(name)
        if kind == "AWS::ApiGatewayV2::Api":
            return api_id_for(self.stack_name, name)
        if kind == "AWS::SQS::Queue":
            return f"https://sqs.{REGION}.{URL_SUFFIX}/{ACCOUNT}/{self.physical_name(name)}"
        return self.physical_name(name)

    def get_att(self, logical_id: str, attribute: str) -> str:
        kind = self.type_of(logical_id)
        name = self.physical_name(logical_id)
        arn = f"arn:{PARTITION}"
        if attribute == "Arn":
            by_type = {
                "AWS::Serverless::Function": f"{arn}:lambda:{REGION}:{ACCOUNT}:function:{name}",
                "AWS::Lambda::Function": f"{arn}:lambda:{REGION}:{ACCOUNT}:function:{name}",
                "AWS::DynamoDB::Table": f"{arn}:dynamodb:{REGION}:{ACCOUNT}:table/{name}",
                "AWS::Serverless::SimpleTable": f"{arn}:dynamodb:{REGION}:{ACCOUNT}:table/{name}",
                "AWS::SQS::Queue": f"{arn}:sqs:{REGION}:{ACCOUNT}:{name}",
                "AWS::Events::EventBus": f"{arn}:events:{REGION}:{ACCOUNT}:event-bus/{name}",
                "AWS::Scheduler::ScheduleGroup": (
                    f"{arn}:scheduler:{REGION}:{ACCOUNT}:schedule-group/{name}"
                ),
                "AWS::IAM::Role": f"{arn}:iam::{ACCOUNT}:role/{name}",
            }
            if kind in by_type:
                return by_type[kind]
        if kind == "AWS::ApiGatewayV2::Api" and attribute == "ApiEndpoint":
            return (
                f"wss://{api_id_for(self.stack_name, logical_id)}.execute-api.{REGION}.{URL_SUFFIX}"
            )
        if kind == "AWS::SQS::Queue" and attribute == "QueueName":
            return name
        if kind in ("AWS::DynamoDB::Table",) and attribute == "StreamArn":
            return f"{arn}:dynamodb:{REGION}:{ACCOUNT}:table/{name}/stream/local"
        raise TemplateError(f"!GetAtt {logical_id}.{attribute} is not supported locally")

    # -- values --------------------------------------------------------------

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [v for v in (self.resolve(item) for item in value) if v is not NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (key, inner), *_ = value.items()
            if key == "Ref":
                return self.ref(str(inner))
            if key == "Fn::GetAtt":
                parts = inner if isinstance(inner, list) else str(inner).split(".", 1)
                return self.get_att(str(parts[0]), str(self.resolve(parts[1])))
            if key == "Fn::Sub":
                return self._sub(inner)
            if key == "Fn::Join":
                separator, items = inner
                return str(separator).join(str(item) for item in self.resolve(items))
            if key == "Fn::Select":
                index, items = inner
                return self.resolve(items)[int(self.resolve(index))]
            if key == "Fn::Split":
                separator, text = inner
                return str(self.resolve(text)).split(str(separator))
            if key.startswith("Fn::") or key == "Condition":
                raise TemplateError(f"{key} is not supported locally: {value!r}")
        resolved = {k: self.resolve(v) for k, v in value.items()}
        return {k: v for k, v in resolved.items() if v is not NO_VALUE}

    def _sub(self, inner: Any) -> str:
        text, variables = (inner[0], inner[1]) if isinstance(inner, list) else (inner, {})
        bound = {name: self.resolve(v) for name, v in (variables or {}).items()}

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in bound:
                return str(bound[name])
            if "." in name and not name.startswith("AWS::"):
                logical_id, attribute = name.split(".", 1)
                return self.get_att(logical_id, attribute)
            return str(self.ref(name))

        return _SUB_PLACEHOLDER.sub(substitute, str(text)).replace("${!", "${")
