"""The Lambda layer as ``sam build`` builds it (template.yaml: BuildMethod makefile):
the Makefile target run in a copy of lib/, into an artifacts folder, exactly as
SAM invokes it. It must ship a bytecode file for every module, compiled so that a
read-only /opt never recompiles, and nothing of the development package.

The interpreter is this one (bytecode is per interpreter version; the template's
runtime is 3.12 and sam build runs the Makefile with python3.12); the wheels are
chosen for arm64, as in the template. Every dependency is pure Python, so the
built layer also imports here.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = f"{sys.version_info.major}.{sys.version_info.minor}"
DEVELOPMENT = ("agent_channel_dev", "tests", "bench", "devtools", "functions")

pytestmark = pytest.mark.slow


def make_layer(source: Path, artifacts: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "make",
            "--no-print-directory",
            "build-SharedLayer",
            f"ARTIFACTS_DIR={artifacts}",
            f"PYTHON={sys.executable}",
            f"RUNTIME={RUNTIME}",
            *overrides,
        ],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module")
def layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # sam build copies the ContentUri folder to a scratch folder and runs make there.
    base = tmp_path_factory.mktemp("layer")
    source = base / "source"
    shutil.copytree(ROOT / "lib", source, ignore=shutil.ignore_patterns("__pycache__"))
    done = make_layer(source, base / "artifacts")
    assert done.returncode == 0, done.stdout + done.stderr
    return base / "artifacts" / "python"


def modules(layer: Path) -> list[Path]:
    return sorted(layer.rglob("*.py"))


def test_every_module_in_the_layer_has_its_bytecode(layer: Path) -> None:
    found = modules(layer)
    assert len(found) > 300  # botocore, pynamodb, Powertools and agent_channel
    missing = [
        str(source.relative_to(layer))
        for source in found
        if not Path(importlib.util.cache_from_source(str(source))).is_file()
    ]
    assert missing == []


def test_the_bytecode_is_unchecked_hash_based(layer: Path) -> None:
    # PEP 552: flags word 0b01 = hash-based, and check_source off: the interpreter
    # loads it without reading the source's mtime, which zipping does not keep.
    for source in modules(layer):
        header = Path(importlib.util.cache_from_source(str(source))).read_bytes()[:16]
        assert header[:4] == importlib.util.MAGIC_NUMBER, source
        assert int.from_bytes(header[4:8], "little") == 0b01, source


def test_the_layer_holds_the_runtime_package_and_its_requirements_only(layer: Path) -> None:
    top = {path.name for path in layer.iterdir()}
    assert {"agent_channel", "pynamodb", "aws_lambda_powertools", "botocore"} <= top
    # No function imports boto3 (every client is botocore's): the layer ships none.
    assert not top & {"boto3", "s3transfer"}
    assert not top & set(DEVELOPMENT), top & set(DEVELOPMENT)
    packaged = {
        p.relative_to(layer / "agent_channel") for p in (layer / "agent_channel").rglob("*.py")
    }
    in_lib = {
        p.relative_to(ROOT / "lib" / "agent_channel")
        for p in (ROOT / "lib" / "agent_channel").rglob("*.py")
    }
    assert packaged == in_lib


def test_the_layers_tracer_loads_no_event_loop(layer: Path) -> None:
    # wrapt 2 imports asyncio from its package (about 7 ms of every traced cold
    # start); lib/constraints.txt keeps the layer on a wrapt without it.
    env = {
        **{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        "PYTHONPATH": str(layer),
        "PYTHONDONTWRITEBYTECODE": "1",
        "LAMBDA_TASK_ROOT": str(layer),
    }
    done = subprocess.run(
        [
            sys.executable,
            "-S",
            "-c",
            "import sys; from agent_channel.observability import tracer; tracer(); "
            "import aws_xray_sdk.core; print('asyncio' in sys.modules)",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_a_read_only_layer_imports_from_bytecode_without_compiling(
    layer: Path, tmp_path: Path
) -> None:
    # Copy, break a source file and make everything read-only: an import that
    # compiled the source would fail, one that uses the .pyc does not.
    copy = tmp_path / "opt" / "python"
    shutil.copytree(layer, copy)
    broken = copy / "agent_channel" / "delivery" / "poster.py"
    broken.write_text('raise SystemExit("the source was compiled, not the bytecode")\n')
    for path in copy.rglob("*"):
        path.chmod(0o555 if path.is_dir() else 0o444)
    env = {
        **{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        "PYTHONPATH": str(copy),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-S",
                "-c",
                "import agent_channel.delivery.poster as p; print(p.SERVICE)",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        for path in copy.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "execute-api"


def test_the_build_refuses_an_interpreter_of_another_version(tmp_path: Path) -> None:
    # Bytecode of another version would be ignored on Lambda: refused at build time.
    done = make_layer(ROOT / "lib", tmp_path / "artifacts", "RUNTIME=3.99")
    assert done.returncode != 0
    assert "the runtime is 3.99" in done.stderr
    assert not (tmp_path / "artifacts").exists()
