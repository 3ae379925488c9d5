"""Every example in README.md and PROTOCOL.md runs, and prints what it shows.

Fenced blocks are collected from the two files and run as a reader would run
them, in a scratch directory, each as its own test:

* ``python`` blocks run in a fresh interpreter. A ``print(...)`` line with a
  trailing ``# text`` comment must print ``text`` (``...`` at its end matches
  any rest of the line).
* ``sh`` blocks run line by line. A command that starts a server runs in the
  background on a free port (``--port 0``), and ``65432`` in the lines after
  it becomes that port. A ``# text`` line right after a command is output the
  command must print.
* ``console`` blocks are transcripts: ``$ command``, then its output. Lines
  after a ``> `` prompt are typed in; ``^C`` is a Ctrl+C. Port numbers the
  kernel picks (a client's address) match any number.
* Blocks with no language (wire diagrams, the file tree) are not code.

A block that needs a server gets one (``python -m sockdemo server`` on a free
port, with TLS when the block uses ``certs/``, whose certificate the scratch
directory has). A block that cannot run says why in a marker just before it:
``<!-- doc: skip (the reason) -->``.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import sockdemo
from conftest import ROOT, Script

DOCS = [ROOT / "README.md", ROOT / "PROTOCOL.md"]
LANGUAGES = {"python", "sh", "console"}
SKIP = re.compile(r"<!--\s*doc:\s*skip\s*\((.+?)\)\s*-->")
SERVER_COMMAND = re.compile(r"(python -m sockdemo server|python/server(\.v2)?\.py)")


@dataclass
class Block:
    path: Path
    line: int
    language: str
    code: str
    skip: str | None

    @property
    def id(self) -> str:
        return f"{self.path.name}:{self.line}"


def blocks() -> list[Block]:
    found = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        i = 0
        while i < len(lines):
            fence = re.match(r"^(\s*)```(\w*)\s*$", lines[i])
            if not fence:
                i += 1
                continue
            indent, language = fence.groups()
            start = i
            i += 1
            body = []
            while not re.match(rf"^{indent}```\s*$", lines[i]):
                body.append(lines[i][len(indent) :])
                i += 1
            i += 1
            if language not in LANGUAGES:
                continue
            before = lines[start - 1] if start > 0 else ""
            skip = SKIP.search(before)
            found.append(
                Block(path, start + 1, language, "\n".join(body), skip.group(1) if skip else None)
            )
    return found


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory like a reader's: `certs/` holds a development certificate."""
    sockdemo.generate_self_signed(tmp_path / "certs")
    return tmp_path


def env() -> dict[str, str]:
    # `python` is the interpreter that has sockdemo, as in the activated venv.
    bin_dir = str(Path(sys.executable).parent)
    return dict(os.environ, PATH=bin_dir + os.pathsep + os.environ["PATH"], PYTHONUNBUFFERED="1")


def start_server(argv: list[str], cwd: Path, started: list[Script]) -> int:
    """Runs a server command in the background on a free port; its port."""
    script = Script(*argv, "--port", "0", stdin=subprocess.DEVNULL, cwd=cwd, env=env())
    started.append(script)
    return script.port()


def server_for(code: str, cwd: Path, started: list[Script]) -> int:
    """The server a block talks to (over TLS if it uses certs/)."""
    argv = ["-m", "sockdemo", "server"]
    if "certs/" in code:
        argv += ["--certfile", "certs/cert.pem", "--keyfile", "certs/key.pem"]
    return start_server(argv, cwd, started)


def python_argv(command: str) -> list[str]:
    """`python ...` or `.venv/bin/python ...` as arguments for this interpreter."""
    words = shlex.split(command)
    assert words[0].endswith("python"), command
    return [os.path.join(ROOT, w) if w.startswith("python/") else w for w in words[1:]]


def expected_prints(code: str) -> list[str]:
    return [
        m.group(1).strip() for m in re.finditer(r"^\s*print\(.*\)\s+#\s*(.+)$", code, re.MULTILINE)
    ]


def matches(expected: str, actual: str) -> bool:
    if expected.endswith("..."):
        return actual.startswith(expected[:-3].rstrip(" ,"))
    return actual == expected


def run_python(block: Block, cwd: Path, started: list[Script]) -> None:
    code = block.code
    if "65432" in code:
        code = code.replace("65432", str(server_for(code, cwd, started)))
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env(), capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    printed = done.stdout.splitlines()
    wanted = expected_prints(block.code)
    assert len(printed) >= len(wanted), printed
    for expected, actual in zip(wanted, printed):
        assert matches(expected, actual), (expected, actual)


def shell_commands(code: str) -> list[tuple[str, list[str]]]:
    """(command, expected output lines) pairs, continuations joined."""
    commands: list[tuple[str, list[str]]] = []
    pending = ""
    for line in code.splitlines():
        if pending:
            line = pending + " " + line.strip()
            pending = ""
        if line.endswith("\\"):
            pending = line[:-1].rstrip()
            continue
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            if commands:
                commands[-1][1].append(stripped[1:].strip())
            continue
        commands.append((re.sub(r"\s+#.*$", "", stripped), []))
    return commands


def run_shell(block: Block, cwd: Path, started: list[Script]) -> None:
    port: int | None = None
    for command, expected in shell_commands(block.code):
        if port is not None:
            command = command.replace("65432", str(port))
        if SERVER_COMMAND.search(command):
            port = start_server(python_argv(command), cwd, started)
            continue
        if "65432" in command:
            port = server_for(command, cwd, started)
            command = command.replace("65432", str(port))
        if port is not None and re.search(r"python -m sockdemo (client|bench)", command):
            command += f" --port {port}" if "--port" not in command else ""
        done = subprocess.run(
            command, shell=True, cwd=cwd, env=env(), capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        printed = [line for line in done.stdout.splitlines() if line.strip()]
        for want in expected:
            assert any(matches(want, line) for line in printed), (command, want, printed)


def pattern(line: str) -> re.Pattern[str]:
    """A transcript line, with the kernel's port numbers as wildcards."""
    return re.compile(re.sub(r"\\ (\d{4,5})\\\)", r"\\ \\d+\\)", re.escape(line)) + "$")


def run_console(block: Block, cwd: Path, started: list[Script]) -> None:
    lines = block.code.splitlines()
    command = lines[0]
    assert command.startswith("$ "), command
    argv = python_argv(command[2:])
    transcript = lines[1:]
    typed = [line[2:] for line in transcript if line.startswith("> ")]
    shown = [line for line in transcript if not line.startswith("> ") and line != "^C"]
    if SERVER_COMMAND.search(command):
        # A server's transcript: a client comes, talks, leaves; then Ctrl+C.
        server = Script(*argv, "--port", "0", cwd=cwd, env=env())
        started.append(server)
        port = server.port()
        received = [
            m.group(1) for line in shown if (m := re.match(r"Received from client: (.+)", line))
        ]
        client = sockdemo.Client("127.0.0.1", port, timeout=10)
        for message in received:
            client.request(message)
        client.close()
        server.wait_for("closed.")
        server.interrupt()
        code, output = server.finish()
        shown = [line.replace("65432", str(port)) for line in shown]
    else:
        port = server_for(" ".join(argv), cwd, started)
        client = Script(*argv, "--port", str(port), stdin=subprocess.PIPE, cwd=cwd, env=env())
        started.append(client)
        client.send("".join(t + "\n" for t in typed))
        code, output = client.finish()
        shown = [line.replace("65432", str(port)) for line in shown]
    assert code == 0, output
    # The prompt "> " has no newline of its own: it leads the next line.
    output = [re.sub(r"^(> )+", "", line) for line in output]
    output = [line for line in output if line]
    assert len(output) == len(shown), (output, shown)
    for want, got in zip(shown, output):
        assert pattern(want).match(got), (want, got)


RUNNERS = {"python": run_python, "sh": run_shell, "console": run_console}


@pytest.mark.parametrize("block", blocks(), ids=lambda b: b.id)
def test_example(block: Block, scratch: Path) -> None:
    if block.skip:
        pytest.skip(block.skip)
    started: list[Script] = []
    try:
        RUNNERS[block.language](block, scratch, started)
    finally:
        for script in started:
            if script.proc.poll() is None:
                script.proc.send_signal(signal.SIGINT)
            script.kill()
