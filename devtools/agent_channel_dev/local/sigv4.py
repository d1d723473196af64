"""Signature Version 4, checked as API Gateway checks ``@connections`` requests.

On AWS an unsigned or wrongly signed management request, or one whose signer
may not ``execute-api:ManageConnections`` on the connection, is answered 403
``ForbiddenException``. Locally every function signs with credentials of its
own, so the check also holds each function to the IAM statements the template
gives it: a missing permission fails here as it fails on AWS.
"""

from __future__ import annotations

import fnmatch
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

SERVICE = "execute-api"
_AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, ?SignedHeaders=(?P<headers>[^,]+), ?"
    r"Signature=(?P<signature>[0-9a-f]{64})$"
)


@dataclass(frozen=True)
class Principal:
    secret: str
    statements: tuple[dict[str, Any], ...] | None
    """IAM statements the signer is held to; None: an operator, allowed everything."""


class Refused(Exception):
    """Answer 403 ForbiddenException with this message."""


def _as_list(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def allows(statements: tuple[dict[str, Any], ...], action: str, resource: str) -> bool:
    """IAM's evaluation, for Allow/Deny statements with Action and Resource patterns."""
    allowed = False
    for statement in statements:
        actions = _as_list(statement.get("Action", []))
        resources = _as_list(statement.get("Resource", []))
        if not any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in actions):
            continue
        if not any(fnmatch.fnmatchcase(resource, r) for r in resources):
            continue
        if statement.get("Effect") == "Deny":
            return False
        allowed = allowed or statement.get("Effect") == "Allow"
    return allowed


def verify(
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    principals: Mapping[str, Principal],
    region: str,
    resource: str,
) -> None:
    """Raise Refused unless the request is signed by a known principal allowed
    ``execute-api:ManageConnections`` on ``resource``."""
    authorization = headers.get("Authorization", "")
    found = _AUTHORIZATION.match(authorization)
    amz_date = headers.get("X-Amz-Date", "")
    if not found or not amz_date:
        raise Refused("Missing Authentication Token")
    principal = principals.get(found["key"])
    if principal is None:
        raise Refused("The security token included in the request is invalid.")
    if found["service"] != SERVICE or found["region"] != region:
        raise Refused(f"Credential should be scoped to a valid region and service {SERVICE}.")
    signed = found["headers"].split(";")
    request = AWSRequest(
        method=method,
        url=url,
        data=body,
        headers={name: headers.get(name, "") for name in signed},
    )
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(found["key"], principal.secret), SERVICE, region)
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected, found["signature"]):
        raise Refused(
            "The request signature we calculated does not match the signature you provided."
        )
    if principal.statements is not None and not allows(
        principal.statements, "execute-api:ManageConnections", resource
    ):
        raise Refused(
            f"User: {found['key']} is not authorized to perform: "
            f"execute-api:ManageConnections on resource: {resource}"
        )
