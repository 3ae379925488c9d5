"""The `sockdemo` command that `pip install` puts on PATH: the same program as
`python -m sockdemo`, from any directory."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import sockdemo
from conftest import default_signals

# Beside the interpreter running the tests: the venv's, or the wheel's in the matrix.
COMMAND = Path(sys.executable).parent / "sockdemo"

pytestmark = pytest.mark.skipif(
    not COMMAND.exists() and shutil.which("sockdemo") is None,
    reason="the sockdemo command is not installed beside this interpreter",
)


def command() -> str:
    return str(COMMAND) if COMMAND.exists() else "sockdemo"


def test_version() -> None:
    shown = subprocess.run([command(), "--version"], capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == f"sockdemo {sockdemo.__version__}"


def test_help_names_the_command() -> None:
    shown = subprocess.run([command(), "--help"], capture_output=True, text=True, check=True)
    assert shown.stdout.startswith("usage: sockdemo ")


def test_server_and_client_from_another_directory(tmp_path) -> None:
    proc = subprocess.Popen(
        [command(), "server", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        preexec_fn=default_signals,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()
        assert first.startswith("Server listening on 127.0.0.1:"), first
        port = first.rsplit(":", 1)[1]
        shown = subprocess.run(
            [command(), "client", "--port", port, "--timeout", "10", "hello"],
            capture_output=True, text=True, check=True, cwd=tmp_path,
        )  # fmt: skip
        assert "Received from server: Server received: hello" in shown.stdout
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
        assert proc.stdout is not None
        proc.stdout.close()
