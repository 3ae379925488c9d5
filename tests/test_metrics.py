"""``--metrics-port``: the counters at /metrics, read with the official
Prometheus client's parser and checked against the traffic sent."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest

import sockdemo
from conftest import Script, frame, read_frame, recv_exactly, reset, wait_until
from sockdemo import metrics as metrics_module

parser = pytest.importorskip(
    "prometheus_client.parser", reason="prometheus_client is not installed (the test group has it)"
)

HANDLER = """
def handler(message):
    return message.upper()
"""


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample at /metrics, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in parser.text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def start(tmp_path: Path, *args: str) -> tuple[Script, int, int]:
    (tmp_path / "upper.py").write_text(HANDLER)
    script = Script(
        "-m", "sockdemo", "server", "--port", "0", "--protocol", "framed",
        "--handler", "upper:handler", "--metrics-port", "0", "--log-level", "warning", *args,
        cwd=tmp_path,
    )  # fmt: skip
    port = script.port()
    if "--workers" in args:
        script.wait_for("Started")
    metrics = int(script.wait_for("Metrics at http://").rsplit(":", 1)[1].split("/")[0])
    return script, port, metrics


def traffic(port: int, connections: int, messages: int) -> int:
    """Sends `messages` framed messages on each connection, then `bye`;
    returns the bytes sent."""
    sent = 0
    for c in range(connections):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            for m in range(messages):
                payload = f"message {c}.{m}".encode()
                sock.sendall(frame(payload))
                sent += 4 + len(payload)
                assert read_frame(sock) == payload.upper()
            sock.sendall(frame(b"bye"))
            sent += 7
            assert read_frame(sock) == sockdemo.BYE_REPLY.encode()
    return sent


@pytest.mark.parametrize("workers", [1, 2])
def test_the_counts_match_the_traffic(tmp_path: Path, workers: int) -> None:
    args = ("--workers", str(workers)) if workers > 1 else ()
    script, port, metrics = start(tmp_path, *args)
    try:
        sent = traffic(port, connections=12, messages=5)
        # A client that breaks the protocol: an error of its own kind.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"\xff\xff\xff\xff")
            assert recv_exactly(sock, 4)  # the error frame's length
        wait_until(lambda: value(scrape(metrics), "sockdemo_connections_active") == 0, timeout=10)
        samples = scrape(metrics)
        assert value(samples, "sockdemo_connections_accepted_total") == 13
        assert value(samples, "sockdemo_connections_closed_total", reason="bye") == 12
        assert value(samples, "sockdemo_connections_closed_total", reason="error") == 1
        assert value(samples, "sockdemo_errors_total", kind="too_large") == 1
        assert value(samples, "sockdemo_messages_received_total") == 12 * 6
        assert value(samples, "sockdemo_messages_sent_total") == 12 * 6  # goodbyes included
        assert value(samples, "sockdemo_received_bytes_total") >= sent
        assert value(samples, "sockdemo_handler_seconds_count") == 12 * 5
        assert value(samples, "sockdemo_handler_seconds_bucket", le="+Inf") == 12 * 5
        assert value(samples, "sockdemo_handler_queue_depth") == 0
        assert value(samples, "sockdemo_tls_handshake_failures_total") == 0
    finally:
        script.proc.terminate()
        script.finish(20)
        script.kill()


def test_tls_handshake_failures_are_counted(tmp_path: Path) -> None:
    cert, key = sockdemo.generate_self_signed(tmp_path)
    script, port, metrics = start(tmp_path, "--certfile", str(cert), "--keyfile", str(key))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"this is no ClientHello\r\n")
            sock.recv(100)
        wait_until(
            lambda: value(scrape(metrics), "sockdemo_tls_handshake_failures_total") == 1,
            timeout=10,
        )
    finally:
        script.proc.terminate()
        script.finish(20)
        script.kill()


def test_the_endpoint_is_private_by_default_and_bounded(tmp_path: Path) -> None:
    """Listening on every address does not publish the metrics; scrapers
    that stall hold at most a bounded number of threads, each for a bounded
    time; one that resets leaves no traceback."""
    (tmp_path / "upper.py").write_text(HANDLER)
    script = Script(
        "-m", "sockdemo", "server", "--port", "0", "--host", "127.0.0.2",
        "--handler", "upper:handler", "--metrics-port", "0", cwd=tmp_path,
    )  # fmt: skip
    try:
        assert script.line().startswith("Server listening on 127.0.0.2:")
        shown = script.wait_for("Metrics at http://")
        assert shown.startswith("Metrics at http://127.0.0.1:"), shown
        metrics = int(shown.rsplit(":", 1)[1].split("/")[0])
        assert _scrape_ok(metrics)  # everything the server runs is up
        threads_before = _threads(script.proc.pid)
        stalled = [socket.create_connection(("127.0.0.1", metrics), timeout=10) for _ in range(150)]
        with socket.create_connection(("127.0.0.1", metrics), timeout=10) as rude:
            rude.sendall(b"GET /met")
            reset(rude)
        # Bounded: the stalled scrapers wait in at most 64 threads.
        assert _threads(script.proc.pid) <= threads_before + 64
        # Their time runs out, and a scrape is answered again.
        wait_until(lambda: _scrape_ok(metrics), timeout=30)
        for sock in stalled:
            sock.close()
    finally:
        script.interrupt()
        code, lines = script.finish()
        script.kill()
    assert code == 0
    assert not any("Traceback" in line for line in lines), lines


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError("no thread count")


def _scrape_ok(port: int) -> bool:
    try:
        return "sockdemo_" in metrics_module.fetch(("127.0.0.1", port), timeout=1)
    except OSError:
        return False
