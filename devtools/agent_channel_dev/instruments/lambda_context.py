"""A Lambda context for invocations outside Lambda (the local stack, tests)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass


@dataclass
class LocalContext:
    function_name: str = "local"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 256
    aws_request_id: str = ""
    log_group_name: str = "local"
    log_stream_name: str = "local"

    def __post_init__(self) -> None:
        if not self.aws_request_id:
            self.aws_request_id = str(uuid.uuid4())

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:us-east-1:000000000000:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000
