"""The runtime package is what Lambda runs, and nothing else.

- The layer is built from the template's ``SharedLayer`` ContentUri: it must hold
  the runtime package alone, import no development library, and list exactly the
  third-party packages its code imports as requirements.
- The runtime package has no import cycle.
- A handler imports only what its route uses: ``$default`` and ``heartbeat`` load
  nothing of grace cancellation or tasks, and ``$default`` no PynamoDB.
- A storage key prefix is built in one module only.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent_channel_dev.local.stack_template import resources

ROOT = Path(__file__).resolve().parents[2]

DEVELOPMENT_LIBRARIES = {"moto", "aiohttp", "websockets", "yaml", "agent_channel_dev"}
STANDARD_LIBRARY = set(sys.stdlib_module_names) | {"__future__"}
DISTRIBUTION_OF = {
    "aws_lambda_powertools": "aws-lambda-powertools",
    "boto3": "boto3",
    "botocore": "botocore",
    "pynamodb": "pynamodb",
}
"""Top-level module -> the distribution that provides it."""


def layer_source() -> Path:
    return ROOT / str(resources()["SharedLayer"]["Properties"]["ContentUri"])


def layer_files() -> list[Path]:
    """The files ``sam build`` copies from the layer's ContentUri, as a clean
    checkout has them (git-tracked: caches and editable-install metadata of a
    developer's machine are not part of a build from the repository)."""
    source = layer_source()
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", str(source)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return sorted(ROOT / name for name in listed if (ROOT / name).is_file())


def runtime_imports(path: Path) -> set[str]:
    """Top-level modules a file imports when it runs (``if TYPE_CHECKING:`` blocks
    are for the type checker alone and never execute)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for child in ast.walk(node))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def test_the_layer_holds_the_runtime_package_alone() -> None:
    files = layer_files()
    relative = {path.relative_to(layer_source()).as_posix() for path in files}
    assert relative, "the layer is empty"
    # The Makefile is the recipe sam build runs (BuildMethod: makefile); what it
    # ships is checked in tests/contract/test_layer_build.py. constraints.txt pins
    # indirect dependencies for cold start.
    assert relative == {"requirements.txt", "constraints.txt", "Makefile"} | {
        name for name in relative if name.startswith("agent_channel/") and name.endswith(".py")
    }
    assert not any("agent_channel_dev" in name or "/local/" in name for name in relative)


def test_the_layer_imports_no_development_library() -> None:
    offenders = {
        path.relative_to(ROOT).as_posix(): sorted(runtime_imports(path) & DEVELOPMENT_LIBRARIES)
        for path in layer_files()
        if path.suffix == ".py"
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_layer_requirements_are_exactly_what_its_code_imports() -> None:
    imported: set[str] = set()
    for path in layer_files():
        if path.suffix == ".py":
            imported |= runtime_imports(path)
    third_party = imported - STANDARD_LIBRARY - {"agent_channel"}
    assert third_party <= set(DISTRIBUTION_OF), f"unmapped imports: {third_party}"
    required = {
        re.split(r"[<>=\[ ]", line.strip())[0].lower()
        for line in (layer_source() / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert required == {DISTRIBUTION_OF[name] for name in third_party}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT / "lib").with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _runtime_edges() -> dict[str, set[str]]:
    """Module-level imports between runtime modules (imports inside functions are
    deliberate lazy imports, and TYPE_CHECKING blocks never run)."""
    modules = {_module_name(path): path for path in (ROOT / "lib" / "agent_channel").rglob("*.py")}
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            edges[name].update(target for target in targets if target in modules)
    return edges


def test_the_runtime_package_has_no_import_cycle() -> None:
    edges = _runtime_edges()
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        assert name not in visiting, " -> ".join([*visiting[visiting.index(name) :], name])
        visiting.append(name)
        for target in sorted(edges[name]):
            # A submodule import runs its package's __init__ first; that edge is
            # implied, not a cycle, so only module-to-module edges are followed.
            visit(target)
        visiting.pop()
        done.add(name)

    for name in sorted(edges):
        visit(name)


_LOADED = """
import json, sys
sys.path[:0] = [{root!r}, {lib!r}]
import functions.{folder}.app
print(json.dumps(sorted(sys.modules)))
"""


def modules_loaded_by(folder: str) -> set[str]:
    """Every module in ``sys.modules`` after a fresh interpreter imports the handler."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT")}
    env.update({"AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "x"})
    env.update({"AWS_SECRET_ACCESS_KEY": "y", "CALLBACK_URL": "https://example.com/test"})
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _LOADED.format(root=str(ROOT), lib=str(ROOT / "lib"), folder=folder),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=True,
    )
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("default", ("pynamodb", "agent_channel.grace", "agent_channel.tasks",
                     "agent_channel.presence.rules", "agent_channel.storage")),
        ("heartbeat", ("agent_channel.tasks", "agent_channel.grace.cancellation",
                       "agent_channel.grace.task_book", "agent_channel.grace.dynamodb",
                       "agent_channel.delivery.fanout", "agent_channel.backend")),
    ],
)  # fmt: skip
def test_a_handler_loads_only_what_its_route_uses(folder: str, forbidden: tuple[str, ...]) -> None:
    loaded = modules_loaded_by(folder)
    assert sorted(m for m in loaded if m.startswith(forbidden)) == []


@pytest.mark.parametrize(
    "prefix",
    ["USER#", "LEASE#", "TOKEN#", "CONN#", "STREAM#", "TOPIC#", "TASK#", "DECISION#", "REQ#",
     "SLOTS#", "COUNTER#", "ROUTED#", '"GRACE_OWED"', "#STATUS#", "#SESSION_TOPICS", "SESSION#"],
)  # fmt: skip
def test_a_key_prefix_is_written_in_one_module(prefix: str) -> None:
    # As `grep -rn 'TOPIC#' lib` would: comments and docstrings count too.
    holders = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "lib").rglob("*.py")
        if prefix in path.read_text(encoding="utf-8")
    }
    assert holders == {"lib/agent_channel/storage/schema.py"}
