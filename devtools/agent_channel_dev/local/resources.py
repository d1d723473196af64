"""The stack's routes, table and schedule group, read from template.yaml (through
stack_template) so the local stack cannot drift from what AWS deploys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent_channel_dev.local import stack_template

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_scheduler import EventBridgeSchedulerClient


@dataclass(frozen=True)
class StackLayout:
    routes: dict[str, str]
    """Route key -> function folder."""
    authorizer: str
    """The $connect authorizer's function folder."""


def layout() -> StackLayout:
    return StackLayout(
        routes=dict(stack_template.routes()), authorizer=stack_template.authorizer_function()
    )


def schedule_group_name(default: str) -> str:
    return str(stack_template.schedule_group_name(default))


def create_table(client: DynamoDBClient, table_name: str, logical_id: str | None = None) -> None:
    """The single table (or the template's table ``logical_id``) as the template declares it."""
    client.create_table(**stack_template.table_create_kwargs(table_name, logical_id=logical_id))
    ttl = stack_template.table_ttl_attribute(logical_id=logical_id)
    if ttl:
        client.update_time_to_live(
            TableName=table_name, TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl}
        )


def create_schedule_group(client: EventBridgeSchedulerClient, name: str) -> None:
    client.create_schedule_group(Name=name)
