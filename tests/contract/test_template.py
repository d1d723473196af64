"""template.yaml is deployable and wired to the code.

- `sam validate --lint` and cfn-lint (informational checks included) pass, offline.
- The SAM translation (aws-sam-translator, as CloudFormation runs it) is read for
  the wiring: routes -> functions that exist, the environment each function's
  code needs, the table as the models use it, the grace Scheduler role.
- Every function's IAM policy is exactly the declared list of calls below, and
  each declared call is one the code reachable from that function makes.
  tests/test_sample_events.py checks the other direction at run time: every AWS
  call a handler really makes is allowed by that function's policy.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import time
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from agent_channel import config
from agent_channel.storage.records import Gsi1, Record
from agent_channel_dev.local import stack_template

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
REGION = "us-east-1"

FUNCTION_IDS = {
    "authorize": "AuthorizeFunction",
    "connect": "ConnectFunction",
    "disconnect": "DisconnectFunction",
    "heartbeat": "HeartbeatFunction",
    "replay": "ReplayFunction",
    "default": "DefaultFunction",
    "sweeper": "SweeperFunction",
    "cancel_offline": "CancelOfflineFunction",
    "backend": "BackendFunction",
    "admin": "AdminFunction",
    "stream": "StreamFunction",
    "redeliver": "RedeliveryFunction",
    "fanout": "FanoutFunction",
}
"""Folder -> logical id, as docs/ARCHITECTURE.md lists them."""

ROUTES = {
    "$connect": "connect",
    "$disconnect": "disconnect",
    "restore": "heartbeat",
    "replay_permissions": "replay",
    "$default": "default",
    "resume": "stream",
    "resync": "stream",
    "ack": "stream",
}

SERVICE_ROUTES = {"heartbeat": "HeartbeatIntegration"}
"""Routes API Gateway serves without Lambda (AWS service integrations)."""

# What each function calls, as (IAM action, resource) with symbolic resources:
#   table        the single table            index:gsi1     its index
#   group        schedules of the grace group scheduler-role  the role Scheduler assumes
#   connections  POST @connections of this API's stage      bus  the task-event bus
#   connections:delete  DELETE @connections (closing sockets)
#   idempotency-table  the idempotency utility's table
# TransactWriteItems is authorized per item (PutItem, UpdateItem, DeleteItem,
# ConditionCheckItem); a 410 Gone during fan-out runs the $disconnect path, so
# every function that broadcasts also carries that path's permissions.
DISCONNECT_PATH = {
    ("dynamodb:DeleteItem", "table"),
    ("dynamodb:Query", "table"),
    ("dynamodb:UpdateItem", "table"),
    ("scheduler:CreateSchedule", "group"),
    ("scheduler:UpdateSchedule", "group"),
    ("iam:PassRole", "scheduler-role"),
}
GONE_PATH = DISCONNECT_PATH | {("dynamodb:GetItem", "table")}
IDEMPOTENT = {
    (action, "idempotency-table")
    for action in (
        "dynamodb:DeleteItem",
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
    )
}
"""Powertools' DynamoDB persistence layer: get, put (conditional), update, delete."""
CALLS: dict[str, set[tuple[str, str]]] = {
    "authorize": {("dynamodb:BatchGetItem", "table")},
    # Reaping on subscribe deletes stale leases and schedules session graces.
    "connect": DISCONNECT_PATH
    | {
        ("dynamodb:ConditionCheckItem", "table"),
        ("dynamodb:PutItem", "table"),
        ("scheduler:DeleteSchedule", "group"),
    },
    "disconnect": DISCONNECT_PATH,
    # The restore route (the former Lambda heartbeat): touch, else restore.
    "heartbeat": {
        ("dynamodb:ConditionCheckItem", "table"),
        ("dynamodb:PutItem", "table"),
        ("dynamodb:UpdateItem", "table"),
        ("scheduler:DeleteSchedule", "group"),
    },
    "replay": GONE_PATH
    | {
        ("dynamodb:BatchGetItem", "table"),
        ("execute-api:ManageConnections", "connections"),
    },
    "default": {("execute-api:ManageConnections", "connections")},
    "sweeper": DISCONNECT_PATH
    | {("dynamodb:Query", "index:gsi1"), ("lambda:InvokeFunction", "sweeper-itself")},
    "redeliver": GONE_PATH
    | {
        ("dynamodb:Query", "index:gsi1"),
        ("execute-api:ManageConnections", "connections"),
        ("events:PutEvents", "bus"),
    },
    "stream": {
        ("dynamodb:GetItem", "table"),
        ("dynamodb:Query", "table"),
        ("dynamodb:Query", "index:gsi1"),
        ("dynamodb:UpdateItem", "table"),
        ("execute-api:ManageConnections", "connections"),
    },
    "cancel_offline": {
        ("dynamodb:ConditionCheckItem", "table"),
        ("dynamodb:DeleteItem", "table"),
        ("dynamodb:GetItem", "table"),
        ("dynamodb:Query", "table"),
        ("dynamodb:Query", "index:gsi1"),
        ("dynamodb:UpdateItem", "table"),
        # Lambda itself sends a run that failed every retry to the dead-letter
        # queue (EventInvokeConfig's on-failure destination), not the code.
        ("sqs:SendMessage", "dead-letter-queue"),
    },
    "backend": GONE_PATH
    | {
        ("dynamodb:BatchGetItem", "table"),
        ("dynamodb:ConditionCheckItem", "table"),
        ("dynamodb:PutItem", "table"),
        ("dynamodb:Query", "index:gsi1"),
        ("execute-api:ManageConnections", "connections"),
        ("lambda:InvokeFunction", "fanout-worker"),
        # unregister_agent
        ("execute-api:ManageConnections", "connections:delete"),
        ("scheduler:DeleteSchedule", "group"),
    }
    | IDEMPOTENT,
    "fanout": GONE_PATH | {("execute-api:ManageConnections", "connections")},
    "admin": {
        ("dynamodb:DeleteItem", "table"),
        ("dynamodb:GetItem", "table"),
        ("dynamodb:PutItem", "table"),
        ("dynamodb:Query", "table"),
        ("dynamodb:UpdateItem", "table"),
        ("execute-api:ManageConnections", "connections:delete"),
    }
    | IDEMPOTENT,
}

# How each action shows in the source (a regex over the modules a function imports).
CALL_MARKERS = {
    "dynamodb:BatchGetItem": r"\.batch_get\(",
    "dynamodb:GetItem": r"\b[A-Z]\w*Record\.get\(",
    "dynamodb:Query": r"\bRecord\.query\(|\b[A-Z]\w*Record\.query\(",
    "dynamodb:PutItem": r"\.save\(",
    "dynamodb:UpdateItem": r"\.update\(",
    "dynamodb:DeleteItem": r"\.delete\(|\.delete_item\(",
    "dynamodb:ConditionCheckItem": r"\.condition_check\(",
    "scheduler:CreateSchedule": r"\.create_schedule\(",
    "scheduler:UpdateSchedule": r"\.update_schedule\(",
    "scheduler:DeleteSchedule": r"\.delete_schedule\(",
    "iam:PassRole": r"\"RoleArn\"",
    "events:PutEvents": r"\.put_events\(",
    "execute-api:ManageConnections": r"\.post_to_connection\(|\.delete_connection\(",
    "lambda:InvokeFunction": r"\.invoke\(\s*FunctionName=",
}
INDEX_QUERY_MARKER = r"\.gsi1\.query\("
RESOURCE_MARKERS = {"connections:delete": r"\.delete_connection\("}
IDEMPOTENCY_MARKER = r"\bDynamoDBPersistenceLayer\("

# Environment. Each variable the code reads has a rule for where it must be set.
ALWAYS_SET = {
    "TABLE_NAME",
    "HEARTBEAT_SECONDS",
    "STALE_AFTER",
    "GRACE_SECONDS",
    "POWERTOOLS_SERVICE_NAME",
    "POWERTOOLS_METRICS_NAMESPACE",
    "POWERTOOLS_LOG_LEVEL",
}
SCHEDULES = {"SCHEDULE_GROUP_NAME", "SCHEDULER_ROLE_ARN", "CANCEL_OFFLINE_FUNCTION_ARN"}
SCHEDULES |= {"GRACE_DLQ_ARN"}
NEEDED_FOR = {
    "scheduler:CreateSchedule": SCHEDULES,
    "scheduler:DeleteSchedule": {"SCHEDULE_GROUP_NAME"},
    "execute-api:ManageConnections": {"CALLBACK_URL"},
    "events:PutEvents": {"EVENT_BUS_NAME"},
}
NEEDED_FOR_RESOURCE = {
    "idempotency-table": {"IDEMPOTENCY_TABLE_NAME"},
    "fanout-worker": {"FANOUT_WORKER_FUNCTION"},
}
OPTIONAL = {
    "MAX_REPLAY_IDS",
    "FANOUT_WORKERS",
    "POSTS_PER_SECOND",
    "CONNECT_WINDOW_SECONDS",
    "HISTORY_RETENTION_SECONDS",
    "REDELIVERY_SECONDS",
    "MAX_DELIVERY_ATTEMPTS",
    "SWEEP_WORKERS",
    "FANOUT_INVOCATION_MEMBERS",
    "AWS_ENDPOINT_URL",
}
SET_BY_LAMBDA = {
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
}
"""Lambda's reserved variables (the role's credentials, the region): never in a template."""
"""Their code defaults are right on AWS too; set where they matter, never required."""
ENV_VALUES: dict[str, Any] = {
    "TABLE_NAME": {"Ref": "Table"},
    "HEARTBEAT_SECONDS": {"Ref": "HeartbeatSeconds"},
    "STALE_AFTER": {"Ref": "StaleAfterSeconds"},
    "GRACE_SECONDS": {"Ref": "GraceSeconds"},
    "POWERTOOLS_LOG_LEVEL": {"Ref": "LogLevel"},
    "SCHEDULE_GROUP_NAME": {"Ref": "GraceScheduleGroup"},
    "SCHEDULER_ROLE_ARN": {"Fn::GetAtt": ["GraceSchedulerRole", "Arn"]},
    "CANCEL_OFFLINE_FUNCTION_ARN": {"Fn::GetAtt": ["CancelOfflineFunction", "Arn"]},
    "GRACE_DLQ_ARN": {"Fn::GetAtt": ["GraceDeadLetterQueue", "Arn"]},
    "EVENT_BUS_NAME": {"Ref": "TaskEventBus"},
    "IDEMPOTENCY_TABLE_NAME": {"Ref": "IdempotencyTable"},
    "HISTORY_RETENTION_SECONDS": {"Ref": "HistoryRetentionSeconds"},
    "REDELIVERY_SECONDS": {"Ref": "RedeliverySeconds"},
    "SWEEP_WORKERS": {"Ref": "SweepWorkers"},
    "FANOUT_WORKER_FUNCTION": {"Fn::GetAtt": ["FanoutFunction", "Arn"]},
    "FANOUT_INVOCATION_MEMBERS": {"Ref": "FanoutInvocationMembers"},
    "CALLBACK_URL": {
        "Fn::Sub": "https://${WebSocketApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}/${StageName}"
    },
}
"""What each variable must point at."""

ENV_READ = re.compile(
    r"""(?:os\.environ\.get|os\.getenv|os\.environ\[|_int)\(?\s*["']([A-Z][A-Z0-9_]+)["']"""
)


# ---------------------------------------------------------------- helpers


class _NoManagedPolicies:
    """The translator's managed-policy loader, offline: the template names none."""

    def load(self) -> dict[str, str]:
        return {}


@cache
def translated() -> dict[str, Any]:
    """template.yaml as CloudFormation sees it after the SAM transform."""
    from samtranslator.translator.transform import transform

    source = stack_template.load_template_text(TEMPLATE.read_text(encoding="utf-8"))
    # As `sam validate` does: local code folders stand for the S3 objects that
    # `sam package` would upload.
    for resource in source["Resources"].values():
        props = resource.get("Properties", {})
        for key in ("CodeUri", "ContentUri"):
            if isinstance(props.get(key), str) and not props[key].startswith("s3://"):
                props[key] = f"s3://bucket/{props[key].strip('/')}"
    result: dict[str, Any] = transform(source, {}, _NoManagedPolicies())
    return result


def resources() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = translated()["Resources"]
    return found


def of_type(kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in resources().items() if r["Type"] == kind}


def properties(logical_id: str) -> dict[str, Any]:
    found: dict[str, Any] = resources()[logical_id].get("Properties", {})
    return found


def function_role(folder: str) -> dict[str, Any]:
    role_ref = properties(FUNCTION_IDS[folder])["Role"]
    assert role_ref.get("Fn::GetAtt", [None])[0], role_ref
    return properties(role_ref["Fn::GetAtt"][0])


def policy_statements(role: dict[str, Any]) -> list[dict[str, Any]]:
    statements: list[dict[str, Any]] = []
    for policy in role.get("Policies", []):
        found = policy["PolicyDocument"]["Statement"]
        statements.extend(found if isinstance(found, list) else [found])
    return statements


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def function_environment(folder: str) -> dict[str, Any]:
    env: dict[str, Any] = properties(FUNCTION_IDS[folder]).get("Environment", {})
    variables: dict[str, Any] = env.get("Variables", {})
    return variables


SYMBOLIC_RESOURCES = {
    json.dumps({"Fn::GetAtt": ["Table", "Arn"]}): "table",
    json.dumps({"Fn::Sub": "${Table.Arn}/index/gsi1"}): "index:gsi1",
    json.dumps(
        {
            "Fn::Sub": "arn:${AWS::Partition}:scheduler:${AWS::Region}:${AWS::AccountId}"
            ":schedule/${GraceScheduleGroup}/*"
        }
    ): "group",
    json.dumps({"Fn::GetAtt": ["GraceSchedulerRole", "Arn"]}): "scheduler-role",
    json.dumps(
        {
            "Fn::Sub": "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}"
            ":${WebSocketApi}/${StageName}/POST/@connections/*"
        }
    ): "connections",
    json.dumps(
        {
            "Fn::Sub": "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}"
            ":${WebSocketApi}/${StageName}/DELETE/@connections/*"
        }
    ): "connections:delete",
    json.dumps({"Fn::GetAtt": ["TaskEventBus", "Arn"]}): "bus",
    json.dumps({"Fn::GetAtt": ["GraceDeadLetterQueue", "Arn"]}): "dead-letter-queue",
    json.dumps({"Fn::GetAtt": ["IdempotencyTable", "Arn"]}): "idempotency-table",
    json.dumps({"Fn::GetAtt": ["FanoutFunction", "Arn"]}): "fanout-worker",
    json.dumps(
        {
            "Fn::Sub": "arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}"
            ":function:${AWS::StackName}-sweeper"
        }
    ): "sweeper-itself",
}


def symbolic(resource: Any) -> str:
    """A policy resource as one of the names of CALLS, or what it is when unknown."""
    key = json.dumps(resource)
    return SYMBOLIC_RESOURCES.get(key, f"unrecognized resource {key}")


def granted(folder: str) -> set[tuple[str, str]]:
    pairs: set[tuple[str, str]] = set()
    for statement in policy_statements(function_role(folder)):
        assert statement["Effect"] == "Allow", statement
        assert "NotAction" not in statement, statement
        assert "NotResource" not in statement, statement
        for action in as_list(statement["Action"]):
            for resource in as_list(statement["Resource"]):
                pairs.add((action, symbolic(resource)))
    return pairs


LIB = ROOT / "lib"
PACKAGE = LIB / "agent_channel"


def module_file(module: str) -> Path | None:
    relative = Path(*module.split("."))
    for candidate in (LIB / relative.with_suffix(".py"), LIB / relative / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {
        name
        for name in found
        if name.startswith("agent_channel") and not name.startswith("agent_channel.local")
    }


def reachable_source(folder: str) -> str:
    """The text of functions/<folder>/app.py and of every agent_channel module it
    imports, directly or not (the local stack excepted: it is not deployed)."""
    start = ROOT / "functions" / folder / "app.py"
    seen: set[Path] = set()
    pending = [start]
    texts: list[str] = []
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        texts.append(path.read_text(encoding="utf-8"))
        for module in imported_modules(path):
            found = module_file(module)
            if found is not None:
                pending.append(found)
    return "\n".join(texts)


def sam_executable() -> str:
    found = shutil.which("sam") or str(ROOT / ".venv-sam" / "bin" / "sam")
    assert Path(found).is_file(), "AWS SAM CLI not found: run `make setup` (it installs it)"
    return found


# ---------------------------------------------------------------- linters


def test_sam_validate_lint_passes_offline(tmp_path: Path) -> None:
    # Lint mode runs cfn-lint only (plain `sam validate` would build an IAM client
    # for managed-policy lookups). Telemetry off, the weekly version check marked
    # as done, and every proxy pointed at a closed port: no network at all.
    app_dir = tmp_path / "sam-app"
    app_dir.mkdir()
    (app_dir / "metadata.json").write_text(
        json.dumps({"telemetryEnabled": False, "lastVersionCheck": time.time()})
    )
    env = {
        **os.environ,
        "SAM_CLI_TELEMETRY": "0",
        "__SAM_CLI_APP_DIR": str(app_dir),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "",
    }
    done = subprocess.run(
        [sam_executable(), "validate", "--lint", "--region", REGION, "--template", str(TEMPLATE)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "is a valid SAM Template" in done.stdout


def test_cfn_lint_passes_with_informational_checks() -> None:
    from cfnlint.api import ManualArgs, lint

    matches = lint(
        TEMPLATE.read_text(encoding="utf-8"),
        config=ManualArgs(regions=[REGION], include_checks=["I"]),
    )
    assert [str(match) for match in matches] == []


def test_the_sam_transform_accepts_the_template() -> None:
    kinds = {r["Type"] for r in resources().values()}
    assert "AWS::Serverless::Function" not in kinds
    assert {"AWS::Lambda::Function", "AWS::Lambda::LayerVersion", "AWS::IAM::Role"} <= kinds


# ---------------------------------------------------------------- routes and functions


def test_routes_map_to_functions_whose_handlers_exist() -> None:
    assert stack_template.routes() == ROUTES
    assert stack_template.service_routes() == SERVICE_ROUTES
    assert stack_template.authorizer_function() == "authorize"
    for folder in {*ROUTES.values(), "authorize"}:
        assert_handler_exists(folder)


def assert_handler_exists(folder: str) -> None:
    app = ROOT / "functions" / folder / "app.py"
    assert app.is_file(), f"functions/{folder}/app.py does not exist"
    tree = ast.parse(app.read_text(encoding="utf-8"))
    names = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    assert "handler" in names, f"functions/{folder}/app.py defines no handler"


def test_every_function_folder_is_deployed_with_the_shared_settings() -> None:
    assert stack_template.functions() == {v: k for k, v in FUNCTION_IDS.items()}
    on_disk = {p.parent.name for p in (ROOT / "functions").glob("*/app.py")}
    assert on_disk <= set(FUNCTION_IDS), f"not in template.yaml: {on_disk - set(FUNCTION_IDS)}"
    layers = of_type("AWS::Lambda::LayerVersion")
    assert len(layers) == 1
    for folder, logical_id in FUNCTION_IDS.items():
        assert_handler_exists(folder)
        function = properties(logical_id)
        assert function["Handler"] == "app.handler"
        assert function["Runtime"] == "python3.12"
        assert function["Architectures"] == ["arm64"]
        assert [layer["Ref"] for layer in function["Layers"]] == list(layers)


def test_the_layer_is_built_from_lib_with_its_requirements() -> None:
    source = stack_template.resources()["SharedLayer"]
    assert source["Properties"]["ContentUri"] == "lib/"
    assert source["Metadata"]["BuildMethod"] == "makefile"
    assert (LIB / "Makefile").is_file()
    assert source["Metadata"]["BuildArchitecture"] == "arm64"
    assert (LIB / "agent_channel" / "__init__.py").is_file()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    wanted = {
        re.split(r"[<>=!~\[]", spec, maxsplit=1)[0].strip(): spec.replace(" ", "")
        for spec in pyproject["project"]["dependencies"]
    }
    lines = (LIB / "requirements.txt").read_text(encoding="utf-8").splitlines()
    pinned = {
        re.split(r"[<>=!~\[]", line, maxsplit=1)[0].strip(): line.replace(" ", "")
        for line in (line.split("#")[0].strip() for line in lines)
        if line
    }
    for name in ("pynamodb", "aws-lambda-powertools"):
        assert pinned.get(name) == wanted[name], f"lib/requirements.txt: {name}"
    assert set(pinned) <= set(wanted)


def test_websocket_api_stage_and_integrations() -> None:
    (api_id, api), *others = of_type("AWS::ApiGatewayV2::Api").items()
    assert not others
    assert api["Properties"]["ProtocolType"] == "WEBSOCKET"
    assert api["Properties"]["RouteSelectionExpression"] == "$request.body.action"
    (stage,) = of_type("AWS::ApiGatewayV2::Stage").values()
    assert stage["Properties"]["StageName"] == {"Ref": "StageName"}
    assert stage["Properties"]["AutoDeploy"] is True
    assert set(stage.get("DependsOn", [])) == set(of_type("AWS::ApiGatewayV2::Route"))

    (authorizer_id, authorizer), *others = of_type("AWS::ApiGatewayV2::Authorizer").items()
    assert not others
    assert authorizer["Properties"]["AuthorizerType"] == "REQUEST"
    # No identity source: the token may be in the header or in the query, and with
    # one API Gateway would answer 401 itself whenever that source is missing.
    assert "IdentitySource" not in authorizer["Properties"]

    permissions = of_type("AWS::Lambda::Permission")
    for route in of_type("AWS::ApiGatewayV2::Route").values():
        props = route["Properties"]
        assert props["ApiId"] == {"Ref": api_id}
        if props["RouteKey"] == "$connect":
            assert props["AuthorizationType"] == "CUSTOM"
            assert props["AuthorizerId"] == {"Ref": authorizer_id}
        else:
            assert props["AuthorizationType"] == "NONE"
        (integration_id,) = stack_template.referenced_ids(props["Target"])
        integration = properties(integration_id)
        # One-way everywhere: a route response is a billed message per frame; the
        # Lambda routes answer through @connections when they answer at all.
        assert "RouteResponseSelectionExpression" not in props
        if props["RouteKey"] in SERVICE_ROUTES:
            # Served by API Gateway itself (tests/contract/test_heartbeat_integration.py).
            assert integration["IntegrationType"] == "AWS"
            continue
        assert integration["IntegrationType"] == "AWS_PROXY"
        folder = ROUTES[props["RouteKey"]]
        # One permission per route (a function serving several routes has one each).
        invoked = [
            p["Properties"]
            for p in permissions.values()
            if p["Properties"]["FunctionName"] == {"Ref": FUNCTION_IDS[folder]}
            and p["Properties"]["SourceArn"]["Fn::Sub"].endswith(f"/*/{props['RouteKey']}")
        ]
        assert len(invoked) == 1, f"{folder}: one Lambda permission for API Gateway"
        assert invoked[0]["Principal"] == "apigateway.amazonaws.com"
        source_arn = invoked[0]["SourceArn"]["Fn::Sub"]
        assert source_arn.endswith(f":${{{api_id}}}/*/{props['RouteKey']}")
    (authorize_permission,) = [
        p["Properties"]
        for p in permissions.values()
        if p["Properties"]["FunctionName"] == {"Ref": "AuthorizeFunction"}
    ]
    assert authorize_permission["SourceArn"]["Fn::Sub"].endswith(
        f":${{{api_id}}}/authorizers/${{{authorizer_id}}}"
    )


# ---------------------------------------------------------------- environment


def code_environment_names() -> set[str]:
    names: set[str] = set()
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "functions").rglob("*.py")]:
        if "local" in path.relative_to(ROOT).parts:
            continue
        text = path.read_text(encoding="utf-8")
        names.update(ENV_READ.findall(text))
        names.update(re.findall(r"\bPOWERTOOLS_[A-Z_]+\b", text))
    return names


def test_every_variable_the_code_reads_has_a_rule() -> None:
    names = code_environment_names()
    # The scan works: config.py's variables are found.
    assert {"TABLE_NAME", "STALE_AFTER", "CALLBACK_URL"} <= names
    ruled = (
        ALWAYS_SET
        | OPTIONAL
        | SET_BY_LAMBDA
        | set().union(*NEEDED_FOR.values(), *NEEDED_FOR_RESOURCE.values())
    )
    assert names - ruled == set(), "a new environment variable needs a rule in this test"


@pytest.mark.parametrize("folder", sorted(FUNCTION_IDS))
def test_each_function_gets_the_environment_its_code_needs(folder: str) -> None:
    env = function_environment(folder)
    actions = {action for action, _ in granted(folder)}
    needed = set(ALWAYS_SET)
    for resource, variables in NEEDED_FOR_RESOURCE.items():
        if any(granted_resource == resource for _, granted_resource in granted(folder)):
            needed |= variables
    for action, variables in NEEDED_FOR.items():
        if action in actions:
            needed |= variables
    assert needed - set(env) == set(), f"{folder} lacks variables"
    unexplained = set(env) - needed - OPTIONAL
    assert unexplained == set(), f"{folder} has variables its calls do not need"
    for name, value in env.items():
        if name in ENV_VALUES:
            assert value == ENV_VALUES[name], f"{folder}: {name} = {value}"


def test_parameters_default_to_the_design_constants(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HEARTBEAT_SECONDS", "STALE_AFTER", "GRACE_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    defaults = config.Settings.from_env()
    parameters = translated()["Parameters"]
    assert parameters["HeartbeatSeconds"]["Default"] == defaults.heartbeat_seconds == 30
    assert parameters["StaleAfterSeconds"]["Default"] == defaults.stale_after_seconds == 45
    assert parameters["GraceSeconds"]["Default"] == defaults.grace_seconds == 30
    assert parameters["LogLevel"]["Default"] == "INFO"
    assert parameters["StageName"]["Type"] == "String"


def test_outputs_name_the_urls_the_table_and_the_bus() -> None:
    outputs = translated()["Outputs"]
    host = "${WebSocketApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}/${StageName}"
    assert outputs["WebSocketUrl"]["Value"] == {"Fn::Sub": f"wss://{host}"}
    assert outputs["CallbackUrl"]["Value"] == {"Fn::Sub": f"https://{host}"}
    assert outputs["TableName"]["Value"] == {"Ref": "Table"}
    assert outputs["EventBusName"]["Value"] == {"Ref": "TaskEventBus"}


def test_every_function_logs_to_its_own_group_with_retention() -> None:
    groups = of_type("AWS::Logs::LogGroup")
    used: set[str] = set()
    for folder, logical_id in FUNCTION_IDS.items():
        group_ref = properties(logical_id)["LoggingConfig"]["LogGroup"]["Ref"]
        assert group_ref in groups, folder
        assert groups[group_ref]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
        used.add(group_ref)
    assert len(used) == len(FUNCTION_IDS)


# ---------------------------------------------------------------- data


def test_the_table_is_the_one_the_models_use() -> None:
    table = properties("Table")
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert table["SSESpecification"]["SSEEnabled"] is True
    assert resources()["Table"]["DeletionPolicy"] == "Retain"
    kwargs = stack_template.table_create_kwargs("t")
    keys = {k["KeyType"]: k["AttributeName"] for k in kwargs["KeySchema"]}
    assert keys == {"HASH": Record._hash_keyname, "RANGE": Record._range_keyname}
    (index,) = kwargs["GlobalSecondaryIndexes"]
    assert index["IndexName"] == Gsi1.Meta.index_name == "gsi1"
    assert index["Projection"] == {"ProjectionType": "ALL"}
    index_keys = {k["KeyType"]: k["AttributeName"] for k in index["KeySchema"]}
    assert index_keys == {"HASH": "gsi1pk", "RANGE": "gsi1sk"}
    assert {Gsi1.gsi1pk.attr_name, Gsi1.gsi1sk.attr_name} == {"gsi1pk", "gsi1sk"}
    defined = {a["AttributeName"]: a["AttributeType"] for a in kwargs["AttributeDefinitions"]}
    assert defined == {"pk": "S", "sk": "S", "gsi1pk": "S", "gsi1sk": "S"}
    assert stack_template.table_ttl_attribute() == Record.expires_at.attr_name == "expires_at"


# ---------------------------------------------------------------- IAM


@pytest.mark.parametrize("folder", sorted(FUNCTION_IDS))
def test_each_policy_is_exactly_the_declared_calls(folder: str) -> None:
    assert granted(folder) == CALLS[folder]


PLATFORM_CALLS = {("cancel_offline", "sqs:SendMessage", "dead-letter-queue")}
"""Calls Lambda makes on a function's behalf, not its code: the on-failure destination."""


def test_platform_calls_are_on_failure_destinations() -> None:
    configs = of_type("AWS::Lambda::EventInvokeConfig").values()
    for folder, _action, _resource in PLATFORM_CALLS:
        [config] = [
            c for c in configs if c["Properties"]["FunctionName"] == {"Ref": FUNCTION_IDS[folder]}
        ]
        destination = config["Properties"]["DestinationConfig"]["OnFailure"]
        assert destination["Destination"] == {"Fn::GetAtt": ["GraceDeadLetterQueue", "Arn"]}


@pytest.mark.parametrize("folder", sorted(FUNCTION_IDS))
def test_each_declared_call_is_made_by_code_the_function_reaches(folder: str) -> None:
    source = reachable_source(folder)
    for action, resource in sorted(CALLS[folder]):
        if (folder, action, resource) in PLATFORM_CALLS:
            continue
        marker = RESOURCE_MARKERS.get(resource) or (
            INDEX_QUERY_MARKER if resource.startswith("index:") else CALL_MARKERS[action]
        )
        if resource == "idempotency-table":
            marker = IDEMPOTENCY_MARKER
        assert re.search(marker, source), f"{folder}: no code makes {action} on {resource}"


def test_no_policy_has_a_wildcard_resource_or_action() -> None:
    for logical_id, role in of_type("AWS::IAM::Role").items():
        for statement in policy_statements(role["Properties"]):
            actions = as_list(statement["Action"])
            assert all("*" not in action for action in actions), (logical_id, statement)
            if any(
                a.split(":")[0] in {"dynamodb", "scheduler", "events", "iam", "sqs"}
                for a in actions
            ):
                assert "*" not in as_list(statement["Resource"]), (logical_id, statement)


def test_functions_carry_only_the_basic_execution_and_xray_write_managed_policies() -> None:
    # X-Ray's write actions take no resource-level permissions; SAM's Tracing: Active
    # grants exactly AWS's write-only X-Ray policy, nothing that reads traces.
    for folder in FUNCTION_IDS:
        arns = function_role(folder).get("ManagedPolicyArns", [])
        names = sorted(json.dumps(arn) for arn in arns)
        assert len(names) == 2, (folder, arns)
        assert any("AWSLambdaBasicExecutionRole" in name for name in names), (folder, arns)
        assert any(name.endswith('policy/AWSXrayWriteOnlyAccess"') for name in names), arns


def test_every_function_traces_actively_with_the_powertools_tracer() -> None:
    for folder, logical_id in FUNCTION_IDS.items():
        assert properties(logical_id)["TracingConfig"] == {"Mode": "Active"}, folder
        # Every handler is wrapped by lambda_handler (Tracer, Logger context,
        # Metrics) directly or through socket_route.
        source = (ROOT / "functions" / folder / "app.py").read_text(encoding="utf-8")
        assert "@lambda_handler" in source or "@socket_route" in source, folder


def test_the_scheduler_role_can_invoke_only_cancel_offline() -> None:
    role = properties("GraceSchedulerRole")
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "scheduler.amazonaws.com"}
    assert trust["Action"] == "sts:AssumeRole"
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
    assert "ManagedPolicyArns" not in role
    pairs = {
        (action, json.dumps(resource))
        for statement in policy_statements(role)
        for action in as_list(statement["Action"])
        for resource in as_list(statement["Resource"])
    }
    assert pairs == {
        ("lambda:InvokeFunction", json.dumps({"Fn::GetAtt": ["CancelOfflineFunction", "Arn"]})),
        ("sqs:SendMessage", json.dumps({"Fn::GetAtt": ["GraceDeadLetterQueue", "Arn"]})),
    }
    assert resources()["GraceDeadLetterQueue"]["Type"] == "AWS::SQS::Queue"
    # Every function that schedules passes exactly this role, to Scheduler only.
    for folder in FUNCTION_IDS:
        for statement in policy_statements(function_role(folder)):
            if "iam:PassRole" in as_list(statement["Action"]):
                assert statement["Resource"] == {"Fn::GetAtt": ["GraceSchedulerRole", "Arn"]}
                assert statement["Condition"] == {
                    "StringEquals": {"iam:PassedToService": "scheduler.amazonaws.com"}
                }


def test_the_grace_group_and_the_sweeper_schedule() -> None:
    (group,) = of_type("AWS::Scheduler::ScheduleGroup")
    assert group == "GraceScheduleGroup"
    schedules = [s["Properties"] for s in of_type("AWS::Scheduler::Schedule").values()]
    targets = {props["Target"]["Arn"]["Fn::GetAtt"][0] for props in schedules}
    assert targets == {"SweeperFunction", "RedeliveryFunction"}
    for props in schedules:
        assert props["ScheduleExpression"] == "rate(1 minute)"
        # The rate schedules live outside the grace group, so the grace functions'
        # scheduler permissions never reach them.
        assert "GroupName" not in props


def test_samconfig_has_sane_defaults() -> None:
    samconfig = tomllib.loads((ROOT / "samconfig.toml").read_text(encoding="utf-8"))
    deploy = samconfig["default"]["deploy"]["parameters"]
    assert deploy["capabilities"] == "CAPABILITY_IAM"
    assert deploy["resolve_s3"] is True
    assert samconfig["default"]["global"]["parameters"]["stack_name"]
    overrides = dict(re.findall(r'(\w+)="([^"]*)"', deploy["parameter_overrides"]))
    assert set(overrides) <= set(translated()["Parameters"])


def test_each_fan_out_function_has_its_memory_as_a_parameter() -> None:
    # CPU follows memory on Lambda, and fan-out is CPU-bound: sized per function.
    parameters = stack_template.template()["Parameters"]
    for logical_id, parameter in (
        ("BackendFunction", "BackendMemorySize"),
        ("ReplayFunction", "ReplayMemorySize"),
        ("DefaultFunction", "DefaultMemorySize"),
        ("FanoutFunction", "FanoutMemorySize"),
    ):
        assert properties(logical_id)["MemorySize"] == {"Ref": parameter}
        assert 128 <= parameters[parameter]["Default"] <= 10240
    assert parameters["BackendMemorySize"]["Default"] >= 1024


# ---------------------------------------------------------------- task events (outbox)


def test_the_table_streams_each_change_to_the_task_event_pipe() -> None:
    assert properties("Table")["StreamSpecification"] == {"StreamViewType": "NEW_AND_OLD_IMAGES"}
    pipe = properties("TaskEventPipe")
    assert pipe["Source"] == {"Fn::GetAtt": ["Table", "StreamArn"]}
    assert pipe["Target"] == {"Fn::GetAtt": ["TaskEventBus", "Arn"]}
    stream = pipe["SourceParameters"]["DynamoDBStreamParameters"]
    assert stream["DeadLetterConfig"] == {
        "Arn": {"Fn::GetAtt": ["TaskEventDeadLetterQueue", "Arn"]}
    }
    assert stream["MaximumRetryAttempts"] == -1
    # Parked before the stream (24 hours) drops the record.
    assert stream["MaximumRecordAgeInSeconds"] < 24 * 3600
    [pattern] = pipe["SourceParameters"]["FilterCriteria"]["Filters"]
    assert json.loads(pattern["Pattern"])["dynamodb"]["NewImage"]["status"] == {"S": ["cancelled"]}


def test_the_pipe_role_reads_the_stream_and_puts_on_the_bus_only() -> None:
    role = properties("TaskEventPipeRole")
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "pipes.amazonaws.com"}
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
    pairs = {
        (action, json.dumps(resource))
        for statement in policy_statements(role)
        for action in as_list(statement["Action"])
        for resource in as_list(statement["Resource"])
    }
    stream = json.dumps({"Fn::GetAtt": ["Table", "StreamArn"]})
    assert pairs == {
        ("dynamodb:DescribeStream", stream),
        ("dynamodb:GetRecords", stream),
        ("dynamodb:GetShardIterator", stream),
        ("dynamodb:ListStreams", stream),
        ("events:PutEvents", json.dumps({"Fn::GetAtt": ["TaskEventBus", "Arn"]})),
        ("sqs:SendMessage", json.dumps({"Fn::GetAtt": ["TaskEventDeadLetterQueue", "Arn"]})),
    }


def test_no_function_publishes_task_events_itself() -> None:
    # task.cancelled comes from the pipe; the redelivery function publishes
    # dispatch.given_up, which is not a consequence of a task's write.
    for folder in ("cancel_offline", "backend"):
        assert not any(action == "events:PutEvents" for action, _ in granted(folder)), folder


def test_the_idempotency_table_expires_its_records() -> None:
    table = properties("IdempotencyTable")
    assert table["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expiration", "Enabled": True}
    outputs = translated()["Outputs"]
    assert outputs["AdminFunctionArn"]["Value"] == {"Fn::GetAtt": ["AdminFunction", "Arn"]}
    assert outputs["BackendFunctionArn"]["Value"] == {"Fn::GetAtt": ["BackendFunction", "Arn"]}
