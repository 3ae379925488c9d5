"""``--workers``: worker processes on one port under a supervisor.

Each test runs ``python -m sockdemo server --workers N`` as a child process,
with a handler module written to a scratch directory that answers with the
worker's pid, so the tests can tell which process answered.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

import sockdemo
from conftest import Script, wait_until

HANDLER = """
import os

def handler(message):
    return "{version} " + str(os.getpid())
"""


def write_handler(directory: Path, version: str = "v1") -> None:
    (directory / "pids.py").write_text(textwrap.dedent(HANDLER).format(version=version))


def start(tmp_path: Path, *args: str) -> tuple[Script, int]:
    write_handler(tmp_path)
    script = Script(
        "-m", "sockdemo", "server", "--port", "0", "--handler", "pids:handler",
        "--log-level", "warning", *args, cwd=tmp_path,
    )  # fmt: skip
    return script, script.port()


def answer(port: int, message: str = "who") -> str:
    """One request on a connection of its own."""
    with sockdemo.Client("127.0.0.1", port, timeout=10) as client:
        reply: str = client.request(message)
        return reply


def pids_answering(port: int, connections: int = 60) -> set[int]:
    return {int(answer(port).split()[1]) for _ in range(connections)}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def supervised(tmp_path: Path) -> Callable[..., tuple[Script, int]]:
    started: list[Script] = []

    def run(*args: str) -> tuple[Script, int]:
        script, port = start(tmp_path, *args)
        started.append(script)
        return script, port

    yield run
    for script in started:
        if script.proc.poll() is None:
            script.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                script.proc.wait(15)
        script.kill()


def test_workers_share_the_port_and_the_kernel_spreads_clients(supervised) -> None:
    script, port = supervised("--workers", "2")
    assert script.line() == "Started 2 workers."
    pids = pids_answering(port)
    assert len(pids) == 2, pids
    assert os.getpid() not in pids


def test_a_dead_worker_is_restarted_and_one_dying_young_backs_off(supervised) -> None:
    script, port = supervised("--workers", "2")
    known = pids_answering(port)
    victim = min(known)
    lines = []
    for _ in range(3):
        os.kill(victim, signal.SIGKILL)
        lines.append(script.wait_for("exited with status"))
        assert f"(pid {victim})" in lines[-1]
        # The replacement serves beside the other worker.
        wait_until(lambda: len(pids_answering(port, 30) - known) == 1, timeout=10)
        victim = (pids_answering(port) - known).pop()
        known.add(victim)
    assert lines[0].endswith("restarting."), lines
    # Killed within a second of starting, twice: the third restart waits.
    assert "restarting in 0." in lines[2], lines


def test_sigterm_drains_every_worker_and_exits_cleanly(supervised) -> None:
    script, port = supervised("--workers", "2")
    pids = pids_answering(port)
    script.proc.send_signal(signal.SIGTERM)
    code, lines = script.finish(20)
    assert code == 0, lines
    assert "Server shutting down." in lines
    assert not [line for line in lines if "Traceback" in line]
    wait_until(lambda: not any(alive(pid) for pid in pids), timeout=5)
    with pytest.raises(ConnectionRefusedError):
        answer(port)


def test_sighup_replaces_the_workers_with_new_code(supervised, tmp_path: Path) -> None:
    script, port = supervised("--workers", "2")
    before = pids_answering(port)
    write_handler(tmp_path, "v2")
    script.proc.send_signal(signal.SIGHUP)
    versions = set()
    # Clients keep coming while the workers are replaced (whether every one
    # of them is answered is the next test's question).
    while not any("Reload done." in line for line in script.drain()):
        with contextlib.suppress(OSError):
            versions.add(answer(port).split()[0])
    assert versions <= {"v1", "v2"}
    after = pids_answering(port)
    assert not before & after
    assert {answer(port).split()[0] for _ in range(10)} == {"v2"}


RELOAD_UNDER_LOAD = r"""
import json, os, signal, subprocess, sys, threading, time
import sockdemo

def write(version):
    with open("pids.py", "w") as f:
        f.write("import os\ndef handler(m):\n    return %r + ' ' + str(os.getpid())\n" % version)

# Over TLS when given a certificate: its handshake must survive a reload too.
cafile = os.environ.get("CAFILE")
tls = ["--certfile", cafile, "--keyfile", os.environ["KEYFILE"]] if cafile else []
write("v1")
boss = subprocess.Popen(
    [sys.executable, "-m", "sockdemo", "server", "--port", "0", "--workers", "2",
     "--handler", "pids:handler", "--log-level", "warning", *tls],
    stdout=subprocess.PIPE, text=True)
port = int(boss.stdout.readline().rsplit(":", 1)[1])
lines = []
done = threading.Event()
def watch():
    for line in boss.stdout:
        lines.append(line.strip())
        if "Reload done." in line:
            done.set()
threading.Thread(target=watch, daemon=True).start()

failures, answered = [], [0]
def hammer():
    while not done.is_set():
        try:
            with sockdemo.Client("127.0.0.1", port, timeout=10, cafile=cafile) as c:
                c.request("who")
                answered[0] += 1
        except OSError as exc:
            failures.append(repr(exc))
threads = [threading.Thread(target=hammer) for _ in range(4)]
for t in threads:
    t.start()
time.sleep(0.3)
write("v2")
boss.send_signal(signal.SIGHUP)
done.wait(60)
for t in threads:
    t.join()
with sockdemo.Client("127.0.0.1", port, timeout=10, cafile=cafile) as c:
    version = c.request("who").split()[0]
boss.send_signal(signal.SIGTERM)
boss.wait(30)
print(json.dumps({"failures": failures, "answered": answered[0], "version": version,
                  "lines": lines}))
"""


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_reload_under_load_refuses_no_connection(tmp_path: Path, tls: bool) -> None:
    """Run in a private network namespace where net.ipv4.tcp_migrate_req can be 1,
    as the README advises, without touching the machine's own setting."""
    setup = "ip link set lo up && sysctl -qw net.ipv4.tcp_migrate_req=1"
    probe = subprocess.run(["unshare", "-n", "sh", "-c", setup], capture_output=True, text=True)
    if shutil.which("unshare") is None or probe.returncode != 0:
        pytest.skip(f"no private network namespace with tcp_migrate_req here: {probe.stderr}")
    certificate = {}
    if tls:
        cert, key = sockdemo.generate_self_signed(tmp_path)
        certificate = {"CAFILE": str(cert), "KEYFILE": str(key)}
    done = subprocess.run(
        ["unshare", "-n", "sh", "-c", f'{setup} && {sys.executable} -c "$PROGRAM"'],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env=dict(os.environ, PROGRAM=RELOAD_UNDER_LOAD, **certificate),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["failures"] == [], report
    assert report["answered"] > 0
    assert report["version"] == "v2"


def test_a_worker_that_cannot_start_on_reload_leaves_the_old_one(
    supervised, tmp_path: Path
) -> None:
    cert, key = sockdemo.generate_self_signed(tmp_path)
    script, port = supervised("--workers", "2", "--certfile", str(cert), "--keyfile", str(key))
    before = pids_answering_tls(port)
    cert.write_text("not a certificate")
    script.proc.send_signal(signal.SIGHUP)
    line = script.wait_for("could not be replaced")
    assert str(cert) in line, line
    assert pids_answering_tls(port) == before


def pids_answering_tls(port: int) -> set[int]:
    """The worker pids that answer over TLS."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    pids = set()
    for _ in range(30):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw) as tls:
                tls.sendall(b"who")
                pids.add(int(tls.recv(100).split()[1]))
    return pids


def test_a_bad_handler_string_is_one_line_and_status_2(tmp_path: Path) -> None:
    script = Script(
        "-m", "sockdemo", "server", "--port", "0", "--workers", "2", "--handler", "nowhere:fn",
        cwd=tmp_path,
    )  # fmt: skip
    code, lines = script.finish(20)
    script.kill()
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("Error: --handler 'nowhere:fn'"), lines
