"""Alarms and the dashboard in template.yaml against the metrics the code emits.

- Every metric the code emits (``count(...)`` in lib/ and functions/) has a place
  on the dashboard, and the dashboard shows no metric the code does not emit.
- Every alarm on the project's namespace names an emitted metric; every alarm
  notifies the one SNS topic; each is explained in docs/OPERATIONS.md.
- The alarms the operators asked for exist, and the function-wide ones cover
  every function.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

from agent_channel_dev.local import stack_template
from tests.contract.test_template import FUNCTION_IDS

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS_DOC = ROOT / "docs" / "OPERATIONS.md"


def _globals_env() -> dict[str, Any]:
    env: dict[str, Any] = stack_template.template()["Globals"]["Function"]["Environment"]
    return dict(env["Variables"])


NAMESPACE = _globals_env()["POWERTOOLS_METRICS_NAMESPACE"]
SERVICE = _globals_env()["POWERTOOLS_SERVICE_NAME"]


def _count_calls(tree: ast.AST) -> tuple[set[str], bool]:
    """Metric names passed literally to count(), and whether count() is also
    called with a name held in a variable."""
    literal: set[str] = set()
    by_variable = False
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "count"
            and node.args
        ):
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                literal.add(first.value)
            else:
                by_variable = True
    return literal, by_variable


def _loop_names(function: ast.AST) -> set[str]:
    """("Name", value) pairs a loop in this function iterates over."""
    names: set[str] = set()
    for node in ast.walk(function):
        if isinstance(node, ast.For) and isinstance(node.iter, ast.Tuple):
            for element in node.iter.elts:
                if (
                    isinstance(element, ast.Tuple)
                    and element.elts
                    and isinstance(element.elts[0], ast.Constant)
                    and isinstance(element.elts[0].value, str)
                ):
                    names.add(element.elts[0].value)
    return names


def emitted_metrics() -> set[str]:
    found: set[str] = set()
    for path in [*(ROOT / "lib").rglob("*.py"), *(ROOT / "functions").rglob("*.py")]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef):
                continue
            literal, by_variable = _count_calls(function)
            found |= literal
            if by_variable:
                names = _loop_names(function)
                assert names, f"{path}:{function.name} counts a metric this test cannot name"
                found |= names
    return found


def resources_of(kind: str) -> dict[str, dict[str, Any]]:
    return {
        logical_id: resource
        for logical_id, resource in stack_template.resources().items()
        if resource.get("Type") == kind
    }


def dashboard_metrics() -> list[list[str]]:
    (dashboard,) = resources_of("AWS::CloudWatch::Dashboard").values()
    body = dashboard["Properties"]["DashboardBody"]["Fn::Sub"]
    # ${X} are the template's references: X stands in for each here.
    parsed = json.loads(re.sub(r"\$\{([^}]+)\}", r"\1", body))
    rows: list[list[str]] = []
    for widget in parsed["widgets"]:
        rows.extend(widget["properties"].get("metrics", []))
    return rows


def alarms() -> dict[str, dict[str, Any]]:
    return {name: r["Properties"] for name, r in resources_of("AWS::CloudWatch::Alarm").items()}


def test_the_scan_finds_the_metrics_counted_by_name_and_in_loops() -> None:
    found = emitted_metrics()
    assert {"Cancellations", "PresenceConflicts", "GraceScheduleFailures"} <= found
    assert {"Deliveries", "GoneConnections", "FailedDeliveries", "ThrottleRetries"} <= found
    assert "CancelEventFailures" not in found, "the pipe carries task events now"


def test_every_emitted_metric_is_on_the_dashboard_and_nothing_else() -> None:
    ours = [row for row in dashboard_metrics() if row[0] == NAMESPACE]
    for row in ours:
        # Powertools' EMF carries the service as the one dimension.
        assert row[2:] == ["service", SERVICE], row
    assert {row[1] for row in ours} == emitted_metrics()


def test_every_alarm_on_our_namespace_names_an_emitted_metric() -> None:
    emitted = emitted_metrics()
    ours = [(name, a) for name, a in alarms().items() if a.get("Namespace") == NAMESPACE] + [
        (name, m["MetricStat"]["Metric"])
        for name, a in alarms().items()
        for m in a.get("Metrics", [])
        if "MetricStat" in m and m["MetricStat"]["Metric"].get("Namespace") == NAMESPACE
    ]
    assert ours
    for name, alarm in ours:
        assert alarm["MetricName"] in emitted, name
        assert alarm["Dimensions"] == [{"Name": "service", "Value": SERVICE}], name


def test_a_sweep_left_to_a_later_minute_raises_an_alarm() -> None:
    alarm = alarms()["SweepFallingBehindAlarm"]
    stats = {m["MetricStat"]["Metric"]["MetricName"] for m in alarm["Metrics"] if "MetricStat" in m}
    assert stats == {"SweepWorkerFailures", "SweepContinuationFailures"}
    [total] = [m for m in alarm["Metrics"] if m.get("ReturnData")]
    assert "workers" in total["Expression"] and "continuations" in total["Expression"]


def test_every_alarm_notifies_the_topic_and_is_explained() -> None:
    doc = OPERATIONS_DOC.read_text(encoding="utf-8")
    for name, alarm in alarms().items():
        assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}], name
        assert alarm["OKActions"] == [{"Ref": "AlarmTopic"}], name
        assert f"### {name}" in doc, f"docs/OPERATIONS.md does not explain {name}"
    subscription = resources_of("AWS::SNS::Subscription")["AlarmTopicEmail"]
    assert subscription["Properties"]["Endpoint"] == {"Ref": "AlarmEmail"}
    assert subscription["Condition"] == "HasAlarmEmail"


def test_the_alarms_operators_need_exist() -> None:
    found = alarms()
    by_metric = {a.get("MetricName"): name for name, a in found.items()}
    for metric in ("FailedDeliveries", "PresenceConflicts", "GraceScheduleFailures"):
        assert metric in by_metric, metric
    # Management API throttling shows as the posts fan-out had to retry.
    assert "ThrottleRetries" in by_metric
    queues = {
        a["Dimensions"][0]["Value"]["Fn::GetAtt"][0]
        for a in found.values()
        if a.get("Namespace") == "AWS/SQS"
    }
    assert queues == {"GraceDeadLetterQueue", "TaskEventDeadLetterQueue"}
    for name, metric in (
        ("FunctionErrorsAlarm", "Errors"),
        ("FunctionThrottlesAlarm", "Throttles"),
    ):
        stats = [m["MetricStat"]["Metric"] for m in found[name]["Metrics"] if "MetricStat" in m]
        assert {s["MetricName"] for s in stats} == {metric}
        covered = {s["Dimensions"][0]["Value"]["Ref"] for s in stats}
        expected = set(FUNCTION_IDS.values())
        if metric == "Errors":
            # The authorizer answers 401 by raising: its Errors are refused tokens.
            expected -= {"AuthorizeFunction"}
        assert covered == expected, name
        [total] = [m for m in found[name]["Metrics"] if m.get("ReturnData")]
        ids = [m["Id"] for m in found[name]["Metrics"] if "MetricStat" in m]
        assert all(metric_id in total["Expression"] for metric_id in ids)


def test_the_dashboard_shows_every_function_and_both_dead_letter_queues() -> None:
    rows = dashboard_metrics()
    lambda_rows = [row for row in rows if row[0] == "AWS/Lambda"]
    for metric in ("Errors", "Throttles"):
        shown = {row[3] for row in lambda_rows if row[1] == metric}
        assert shown == set(FUNCTION_IDS.values()), metric
    assert len([row for row in rows if row[0] == "AWS/SQS"]) == 2
