"""stack_template reads template.yaml for the local stack and the test fixtures."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from agent_channel_dev.local import stack_template


def test_short_tags_load_as_their_long_forms() -> None:
    loaded = stack_template.load_template_text(
        "A: !Ref Table\n"
        "B: !GetAtt Table.Arn\n"
        "C: !Sub '${Table.Arn}/index/gsi1'\n"
        "D: !Sub ['${X}-y', {X: !Ref AWS::StackName}]\n"
        "E: !If [IsProd, 1, 2]\n"
        "F: !Condition IsProd\n"
        "G: !GetAtt [Table, StreamArn]\n"
    )
    assert loaded == {
        "A": {"Ref": "Table"},
        "B": {"Fn::GetAtt": ["Table", "Arn"]},
        "C": {"Fn::Sub": "${Table.Arn}/index/gsi1"},
        "D": {"Fn::Sub": ["${X}-y", {"X": {"Ref": "AWS::StackName"}}]},
        "E": {"Fn::If": ["IsProd", 1, 2]},
        "F": {"Condition": "IsProd"},
        "G": {"Fn::GetAtt": ["Table", "StreamArn"]},
    }


def test_referenced_ids_skip_pseudo_parameters() -> None:
    value = {"Fn::Sub": "arn:${AWS::Partition}:x:${AWS::Region}:${Fn.Arn}/${Api}"}
    assert stack_template.referenced_ids(value) == ["Fn", "Api"]
    assert stack_template.referenced_ids({"Fn::Join": ["", [{"Ref": "A"}, "b"]]}) == ["A"]


def test_routes_and_the_authorizer_come_from_the_template() -> None:
    assert stack_template.routes() == {
        "$connect": "connect",
        "$disconnect": "disconnect",
        "heartbeat": "heartbeat",
        "replay_permissions": "replay",
        "$default": "default",
        "resume": "stream",
        "resync": "stream",
        "ack": "stream",
    }
    assert stack_template.authorizer_function() == "authorize"
    assert set(stack_template.functions().values()) >= {"sweeper", "cancel_offline", "backend"}


def test_the_table_is_created_as_declared() -> None:
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(**stack_template.table_create_kwargs("demo"))
        table = client.describe_table(TableName="demo")["Table"]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert {k["AttributeName"]: k["KeyType"] for k in table["KeySchema"]} == {
        "pk": "HASH",
        "sk": "RANGE",
    }
    (index,) = table["GlobalSecondaryIndexes"]
    assert index["IndexName"] == "gsi1"
    assert index["Projection"] == {"ProjectionType": "ALL"}
    assert stack_template.table_ttl_attribute() == "expires_at"


def test_the_schedule_group_name_falls_back_when_derived_from_the_stack() -> None:
    # The deployed name is ${AWS::StackName}-grace: no local meaning.
    assert stack_template.schedule_group_name("agent-channel") == "agent-channel"


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "template.yaml"
    path.write_text(body, encoding="utf-8")
    return path


def test_a_literal_schedule_group_name_is_used(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "Resources:\n  G:\n    Type: AWS::Scheduler::ScheduleGroup\n"
        "    Properties:\n      Name: fixed-group\n",
    )
    assert stack_template.schedule_group_name("fallback", path) == "fixed-group"


def test_a_provisioned_table_keeps_its_throughput(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "Resources:\n  T:\n    Type: AWS::DynamoDB::Table\n    Properties:\n"
        "      AttributeDefinitions: [{AttributeName: id, AttributeType: S}]\n"
        "      KeySchema: [{AttributeName: id, KeyType: HASH}]\n"
        "      ProvisionedThroughput: {ReadCapacityUnits: 1, WriteCapacityUnits: 1}\n",
    )
    kwargs = stack_template.table_create_kwargs("t", path)
    assert kwargs["BillingMode"] == "PROVISIONED"
    assert kwargs["ProvisionedThroughput"] == {"ReadCapacityUnits": 1, "WriteCapacityUnits": 1}
    assert "GlobalSecondaryIndexes" not in kwargs
    assert stack_template.table_ttl_attribute(path) == ""


def test_shapes_it_cannot_read_are_reported(tmp_path: Path) -> None:
    two_tables = _write(
        tmp_path,
        "Resources:\n  A:\n    Type: AWS::DynamoDB::Table\n  B:\n    Type: AWS::DynamoDB::Table\n",
    )
    with pytest.raises(stack_template.TemplateError):
        stack_template.table_create_kwargs("t", two_tables)
    bad_code = tmp_path / "bad.yaml"
    bad_code.write_text(
        "Resources:\n  F:\n    Type: AWS::Serverless::Function\n"
        "    Properties:\n      CodeUri: src/\n",
        encoding="utf-8",
    )
    with pytest.raises(stack_template.TemplateError):
        stack_template.functions(bad_code)
    with pytest.raises(stack_template.TemplateError):
        stack_template.load_template_text("- a list\n")
