"""How the command line reaches the backend's commands: the local stack's
``POST /_backend`` and ``POST /_admin``, or the deployed BackendFunction and
AdminFunction through ``lambda.invoke``. Both carry the same JSON command and
bring back the same JSON answer. ``function_for`` says which function serves an op."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Protocol

from agent_channel_dev.local import backend_secret

TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class BackendFunction:
    """One of the two backend functions, as each place names it."""

    output: str
    logical_id: str
    local_path: str


DELIVERY = BackendFunction("BackendFunctionArn", "BackendFunction", "/_backend")
ADMIN = BackendFunction("AdminFunctionArn", "AdminFunction", "/_admin")


ADMIN_OPS = frozenset(
    {"create_user", "create_agent", "create_topic", "issue_token", "revoke_token"}
)
"""The admin function's ops, spelled out so the command line starts without
importing the runtime package; a test holds it equal to the admin registry."""


def function_for(op: object) -> BackendFunction:
    """The function that serves an op: the admin one for accounts and tokens."""
    return ADMIN if isinstance(op, str) and op in ADMIN_OPS else DELIVERY


class TransportError(Exception):
    """The command could not be delivered or its answer could not be read."""


class Transport(Protocol):
    def call(self, command: dict[str, Any]) -> dict[str, Any]: ...

    def describe(self) -> str: ...


def _answer(raw: bytes, function_error: str | None) -> dict[str, Any]:
    try:
        answer = json.loads(raw or b"null")
    except ValueError as error:
        raise TransportError("the backend answered something that is not JSON") from error
    if function_error or not isinstance(answer, dict):
        message = answer.get("errorMessage") if isinstance(answer, dict) else None
        return {"ok": False, "error": "function_error", "message": str(message or answer)}
    return answer


@dataclass(frozen=True)
class LocalTransport:
    """The dev server's backend endpoint (``agent-channel dev``)."""

    base_url: str
    function: BackendFunction = DELIVERY
    secret: str | None = None
    """The local stack's backend secret (None: from the environment or its file)."""

    def describe(self) -> str:
        return self.base_url

    def call(self, command: dict[str, Any]) -> dict[str, Any]:
        url = self.base_url.rstrip("/") + self.function.local_path
        if not url.startswith(("http://", "https://")):
            raise TransportError(f"--local must be an http(s) URL, got {self.base_url!r}")
        secret = self.secret or backend_secret.for_client()
        if not secret:
            raise TransportError(
                f"no backend secret: set ${backend_secret.SECRET_ENV} to the secret "
                "`agent-channel dev` printed, or run it with the same data directory"
            )
        request = urllib.request.Request(  # noqa: S310  (scheme checked above)
            url,
            data=json.dumps(command).encode("utf-8"),
            headers={"Content-Type": "application/json", **backend_secret.authorization(secret)},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:  # noqa: S310
                return _answer(response.read(), response.headers.get("X-Amz-Function-Error"))
        except urllib.error.HTTPError as error:
            return _answer(error.read(), f"HTTP {error.code}")
        except (urllib.error.URLError, OSError) as error:
            raise TransportError(
                f"cannot reach the local stack at {self.base_url} (is `agent-channel dev` "
                f"running?): {error}"
            ) from error


@dataclass(frozen=True)
class LambdaTransport:
    """The deployed stack's BackendFunction or AdminFunction, found through CloudFormation."""

    stack_name: str
    region: str | None = None
    function: BackendFunction = DELIVERY

    def describe(self) -> str:
        return f"stack {self.stack_name}"

    def function_name(self) -> str:
        import boto3

        cloudformation = boto3.client("cloudformation", region_name=self.region)
        stacks = cloudformation.describe_stacks(StackName=self.stack_name)["Stacks"]
        for output in stacks[0].get("Outputs", []) if stacks else []:
            if output.get("OutputKey") == self.function.output:
                return str(output["OutputValue"])
        resource = cloudformation.describe_stack_resource(
            StackName=self.stack_name, LogicalResourceId=self.function.logical_id
        )
        return str(resource["StackResourceDetail"]["PhysicalResourceId"])

    def call(self, command: dict[str, Any]) -> dict[str, Any]:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            client = boto3.client("lambda", region_name=self.region)
            response = client.invoke(
                FunctionName=self.function_name(),
                InvocationType="RequestResponse",
                Payload=json.dumps(command).encode("utf-8"),
            )
        except (BotoCoreError, ClientError) as error:
            raise TransportError(
                f"cannot invoke the backend of {self.stack_name}: {error}"
            ) from error
        return _answer(response["Payload"].read(), response.get("FunctionError"))
