"""The lean @connections poster sends what boto3 would send: the same URL and a
SigV4 signature byte-identical to botocore's, with and without session tokens.

Two independent checks: (1) boto3's own client builds and signs a
post_to_connection (captured before it is sent), and the poster's signer, given
the same instant, must produce the same path and headers; (2) a real HTTP server
records what the poster really sends, and botocore's SigV4Auth re-signs that
request at the same instant: the Authorization must match byte for byte.
"""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from unittest import mock

import boto3
import botocore.auth
import pytest
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.credentials import Credentials as BotocoreCredentials
from botocore.exceptions import ClientError

from agent_channel.delivery.poster import (
    ConnectionsPoster,
    Credentials,
    SigV4Signer,
    connection_path,
    default_credentials,
)
from agent_channel.delivery.rate import RateBudget

REGION = "eu-west-1"
HOST = "abc123defg.execute-api.eu-west-1.amazonaws.com"
ENDPOINT = f"https://{HOST}/prod"
CONNECTION_IDS = ["Zm9vYmFyPQ=", "aB/c=+ d", "L0SM9cOFvHcCIhw=", "~x_y-z.", "é€"]
WITH_TOKEN = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "FQoG//tok+en=")
WITHOUT_TOKEN = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", None)


def boto3_request(credentials: Credentials, connection_id: str, data: bytes) -> AWSRequest:
    """The request boto3's client signs for this post (stopped before the wire)."""
    client = boto3.client(
        "apigatewaymanagementapi",
        endpoint_url=ENDPOINT,
        region_name=REGION,
        aws_access_key_id=credentials.access_key,
        aws_secret_access_key=credentials.secret_key,
        aws_session_token=credentials.token,
    )
    captured: list[AWSRequest] = []

    def capture(request: AWSRequest, **_: Any) -> AWSResponse:
        captured.append(request)
        raw = mock.Mock()
        raw.stream.return_value = iter([b""])
        return AWSResponse(request.url, 200, {}, raw)

    client.meta.events.register("before-send", capture)
    client.post_to_connection(ConnectionId=connection_id, Data=data)
    return captured[0]


def header(request: AWSRequest, name: str) -> str | None:
    value = request.headers.get(name)
    return value.decode() if isinstance(value, bytes) else value


@pytest.mark.parametrize("credentials", [WITH_TOKEN, WITHOUT_TOKEN], ids=["token", "no-token"])
@pytest.mark.parametrize("connection_id", CONNECTION_IDS)
def test_the_signer_matches_the_request_boto3_signs(
    credentials: Credentials, connection_id: str
) -> None:
    data = '{"type":"decision","text":"ünïcode"}'.encode()
    sent = boto3_request(credentials, connection_id, data)
    timestamp = header(sent, "X-Amz-Date")
    assert timestamp is not None

    path = connection_path("/prod", connection_id)
    ours = SigV4Signer(HOST, REGION).sign("POST", path, data, credentials, timestamp)

    assert f"https://{HOST}{path}" == sent.url
    assert ours["authorization"] == header(sent, "Authorization")
    assert ours["x-amz-date"] == timestamp
    assert ours.get("x-amz-security-token") == header(sent, "X-Amz-Security-Token")


class Recorder(BaseHTTPRequestHandler):
    """Records each request and answers with the status queued for it."""

    seen: list[tuple[str, dict[str, str], bytes]] = []
    answers: list[tuple[int, dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Recorder.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        status, headers, answer = Recorder.answers.pop(0) if Recorder.answers else (200, {}, b"")
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *_: Any) -> None:
        return


@pytest.fixture
def server() -> Iterator[str]:
    Recorder.seen.clear()
    Recorder.answers.clear()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/prod"
    finally:
        httpd.shutdown()
        httpd.server_close()


INSTANT = datetime.datetime(2026, 3, 4, 23, 59, 58, tzinfo=datetime.UTC)


@pytest.mark.parametrize("credentials", [WITH_TOKEN, WITHOUT_TOKEN], ids=["token", "no-token"])
def test_botocore_re_signs_what_the_poster_sent_to_the_same_signature(
    server: str, credentials: Credentials
) -> None:
    poster = ConnectionsPoster(
        server, region=REGION, credentials=lambda: credentials, clock=INSTANT.timestamp
    )
    for connection_id in CONNECTION_IDS:
        poster.post_to_connection(ConnectionId=connection_id, Data=b'{"n":1}')
    poster.close()

    assert len(Recorder.seen) == len(CONNECTION_IDS)
    for path, headers, body in Recorder.seen:
        request = AWSRequest(
            method="POST",
            url=server.removesuffix("/prod") + path,
            data=body,
            headers={
                name: headers[name]
                for name in ("host", "x-amz-date", "x-amz-security-token")
                if name in headers
            },
        )
        signer = botocore.auth.SigV4Auth(
            BotocoreCredentials(credentials.access_key, credentials.secret_key, credentials.token),
            "execute-api",
            REGION,
        )
        naive = INSTANT.replace(tzinfo=None)
        with mock.patch.object(botocore.auth, "get_current_datetime", return_value=naive):
            signer.add_auth(request)
        assert headers["authorization"] == request.headers["Authorization"]
        assert headers["x-amz-date"] == "20260304T235958Z"
        assert ("x-amz-security-token" in headers) is (credentials.token is not None)
        assert body == b'{"n":1}'


@pytest.mark.parametrize(
    ("status", "headers", "code"),
    [
        (410, {"x-amzn-ErrorType": "GoneException:http://internal"}, "GoneException"),
        (410, {}, "GoneException"),
        (429, {"x-amzn-ErrorType": "LimitExceededException"}, "LimitExceededException"),
        (429, {}, "TooManyRequestsException"),
        (413, {"x-amzn-ErrorType": "PayloadTooLargeException"}, "PayloadTooLargeException"),
        (403, {}, "ForbiddenException"),
        (500, {}, "500"),
    ],
)
def test_an_error_answer_raises_the_client_error_boto3_would(
    server: str, status: int, headers: dict[str, str], code: str
) -> None:
    Recorder.answers.append((status, headers, b'{"message":"nope"}'))
    poster = ConnectionsPoster(server, region=REGION, credentials=lambda: WITH_TOKEN)
    with pytest.raises(ClientError) as raised:
        poster.post_to_connection(ConnectionId="abc=", Data=b"{}")
    assert raised.value.response["Error"]["Code"] == code
    assert raised.value.response["Error"]["Message"] == "nope"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    # The connection is kept alive after an error answer: the next post reuses it.
    poster.post_to_connection(ConnectionId="abc=", Data=b"{}")
    poster.close()


def test_the_signing_key_follows_rotated_credentials_and_the_day() -> None:
    signer = SigV4Signer(HOST, REGION)
    first = signer.signing_key("secret-1", "20260304")
    assert signer.signing_key("secret-1", "20260304") is first
    assert signer.signing_key("secret-2", "20260304") != first
    assert signer.signing_key("secret-1", "20260305") != first
    # Each against botocore's own derivation, via a signature over the same string.
    for secret, day in (("secret-2", "20260304"), ("secret-1", "20260305")):
        boto = botocore.auth.SigV4Auth(BotocoreCredentials("AK", secret), "execute-api", REGION)
        request = AWSRequest("POST", f"https://{HOST}/")
        request.context["timestamp"] = f"{day}T000000Z"
        assert signer.signing_key(secret, day) == _botocore_key(boto, day)


def _botocore_key(signer: botocore.auth.SigV4Auth, day: str) -> bytes:
    key = signer._sign(f"AWS4{signer.credentials.secret_key}".encode(), day)
    for part in (REGION, "execute-api", "aws4_request"):
        key = signer._sign(key, part)
    return key


def test_the_region_is_read_from_an_execute_api_host() -> None:
    poster = ConnectionsPoster(
        "https://x1.execute-api.ap-south-2.amazonaws.com/prod",
        region="us-east-1",
        credentials=lambda: WITH_TOKEN,
    )
    assert poster._signer.region == "ap-south-2"
    with pytest.raises(ValueError, match="not an http"):
        ConnectionsPoster("wss://x/prod", region="us-east-1", credentials=lambda: WITH_TOKEN)


def test_credentials_come_from_the_environment_first_then_the_chain(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-env")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token-env")
    provide = default_credentials()
    assert provide() == Credentials("AKENV", "secret-env", "token-env")
    # Rotated in the environment: the next post signs with the new set.
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token-2")
    assert provide().token == "token-2"

    # No environment credentials: botocore's chain (here a shared credentials file).
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    shared = tmp_path / "credentials"
    shared.write_text(
        "[default]\naws_access_key_id = AKFILE\naws_secret_access_key = secret-file\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(shared))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    assert default_credentials()() == Credentials("AKFILE", "secret-file", None)


def test_every_post_draws_on_the_process_budget(server: str) -> None:
    drawn: list[int] = []

    class Counting(RateBudget):
        def acquire(self) -> float:
            drawn.append(1)
            return 0.0

    poster = ConnectionsPoster(
        server, region=REGION, credentials=lambda: WITH_TOKEN, budget=Counting(1000)
    )
    for connection_id in CONNECTION_IDS:
        poster.post_to_connection(ConnectionId=connection_id, Data=b"{}")
    poster.close()
    assert len(drawn) == len(CONNECTION_IDS) == len(Recorder.seen)


class KeepAlive(Recorder):
    """HTTP/1.1 with keep-alive; after each request it may drop the connection
    silently, as a server does with an idle kept-alive socket."""

    protocol_version = "HTTP/1.1"
    drop_after_answer = False
    connections: list[int] = []

    def setup(self) -> None:
        # One handler per accepted connection.
        KeepAlive.connections.append(1)
        super().setup()

    def do_POST(self) -> None:
        super().do_POST()
        if KeepAlive.drop_after_answer:
            self.close_connection = True


@pytest.fixture
def keep_alive_server() -> Iterator[str]:
    Recorder.seen.clear()
    KeepAlive.connections.clear()
    KeepAlive.drop_after_answer = False
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), KeepAlive)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/prod"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_posts_reuse_a_kept_alive_connection(keep_alive_server: str) -> None:
    poster = ConnectionsPoster(keep_alive_server, region=REGION, credentials=lambda: WITH_TOKEN)
    for n in range(5):
        poster.post_to_connection(ConnectionId=f"c{n}=", Data=b"{}")
    poster.close()
    assert len(Recorder.seen) == 5
    assert len(KeepAlive.connections) == 1


def test_a_kept_alive_connection_the_server_dropped_is_replaced_once(
    keep_alive_server: str,
) -> None:
    KeepAlive.drop_after_answer = True
    poster = ConnectionsPoster(keep_alive_server, region=REGION, credentials=lambda: WITH_TOKEN)
    opened: list[int] = []
    fresh = poster._fresh

    def counted() -> Any:
        opened.append(1)
        return fresh()

    poster._fresh = counted  # type: ignore[method-assign]
    for n in range(3):
        time.sleep(0.05)  # the server has closed its side by the next post
        poster.post_to_connection(ConnectionId=f"c{n}=", Data=b"{}")
    poster.close()
    # Each post arrived exactly once, each on a fresh connection.
    assert [path.rsplit("/", 1)[1] for path, _, _ in Recorder.seen] == ["c0%3D", "c1%3D", "c2%3D"]
    # The first post opened one; each later one found its kept-alive socket dropped,
    # and opened one more after the failed attempt.
    assert len(opened) == 3
    assert len(KeepAlive.connections) == 3
