"""The load generator against real servers: it runs, checks every reply, reports."""

from __future__ import annotations

import json
import re
import socket
import threading
import time

import pytest

import sockdemo


@pytest.mark.parametrize(
    ("protocol", "size"), [("raw", 64), ("raw", 1024), ("raw", 100_000), ("framed", 100_000)]
)
def test_bench_reports_zero_errors_against_the_server(serve, protocol, size) -> None:
    server = serve(protocol=protocol, max_clients=50)
    ticks: list[tuple[float, int, int]] = []
    report = sockdemo.bench(
        "127.0.0.1",
        server.server_address[1],
        connections=8,
        size=size,
        duration=1.2,
        protocol=protocol,
        progress=lambda *tick: ticks.append(tick),
    )
    assert report["errors"] == 0
    assert report["connections"] == 8
    assert report["requests"] > 0
    server.shutdown()  # every connection counted
    messages = server.stats()["messages"]
    if protocol == "raw" and size > 1024:
        # A burst is cut into at least size/1024 messages (more where the
        # network split it elsewhere), each answered behind its own prefix.
        assert messages >= report["requests"] * -(-size // 1024)
    else:
        # A request in flight at the deadline is answered but not counted by bench.
        assert report["requests"] <= messages <= report["requests"] + 8
    assert report["requests_per_second"] > 0
    latency = report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert ticks and ticks[0][1] > 0  # a progress line each second


def test_bench_over_tls(serve, tmp_path) -> None:
    cert, key = sockdemo.generate_self_signed(tmp_path)
    server = serve(certfile=cert, keyfile=key)
    report = sockdemo.bench(
        "127.0.0.1", server.server_address[1], connections=4, duration=0.5, cafile=cert
    )
    assert report["errors"] == 0 and report["requests"] > 0


def test_wrong_replies_are_counted_as_errors(serve) -> None:
    server = serve(reply_prefix="Something else: ")
    report = sockdemo.bench("127.0.0.1", server.server_address[1], connections=2, duration=0.5)
    assert report["requests"] == 0
    assert report["errors"] > 0


def test_a_server_that_never_answers_is_an_error_not_a_hang() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        report = sockdemo.bench("127.0.0.1", silent.getsockname()[1], connections=2, duration=0.5)
    assert report["requests"] == 0
    # Both connections' first request was still waiting when the run ended.
    assert report["unanswered"] == 2


def test_bench_refused_and_bad_arguments() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        with pytest.raises(ConnectionRefusedError):
            sockdemo.bench("127.0.0.1", probe.getsockname()[1], duration=0.2)
    with pytest.raises(ValueError, match="connections"):
        sockdemo.bench(connections=0, duration=0.2)


def test_bench_command_prints_json(run, serve) -> None:
    server = serve()
    port = str(server.server_address[1])
    code, lines = run(
        "-m", "bench", "--port", port, "--duration", "0.5", "--connections", "3", "--json"
    ).finish()
    assert code == 0, lines
    report = json.loads("\n".join(lines))
    assert report["errors"] == 0 and report["connections"] == 3


def test_bench_command_prints_progress_and_a_summary(run, serve) -> None:
    server = serve()
    port = str(server.server_address[1])
    code, lines = run("-m", "bench", "--port", port, "--duration", "1.5").finish()
    assert code == 0, lines
    text = "\n".join(lines)
    assert "req/s" in text and "errors    0" in text and "p99.9" in text
    # A progress line each second; a busy machine may print it at 1.1 s.
    assert any(re.match(r"\s*1\.\ds\s+[\d,]+ requests", line) for line in lines), lines


def test_bench_runs_while_other_threads_use_python(serve) -> None:
    """The generator releases the interpreter while it runs."""
    server = serve()
    stop = threading.Event()
    counted = 0
    longest_gap = 0.0

    def count() -> None:
        nonlocal counted, longest_gap
        last = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            longest_gap = max(longest_gap, now - last)
            last = now
            counted += 1

    worker = threading.Thread(target=count)
    worker.start()
    before = counted
    sockdemo.bench("127.0.0.1", server.server_address[1], connections=2, duration=0.5)
    during = counted - before
    stop.set()
    worker.join()
    # Held for the whole call, the interpreter would stop the counter for
    # half a second; released, it keeps counting throughout.
    assert during > 1000
    assert longest_gap < 0.25, longest_gap


@pytest.mark.parametrize(
    ("server_protocol", "bench_protocol", "advice"),
    [
        ("framed", "raw", "answers in frames: use the framed protocol"),
        ("raw", "framed", "does not answer in frames"),
    ],
)
def test_bench_against_the_other_protocol_says_so_and_fails(
    run, serve, server_protocol: str, bench_protocol: str, advice: str
) -> None:
    server = serve(protocol=server_protocol)
    port = str(server.server_address[1])
    code, lines = run(
        "-m", "bench", "--port", port, "--duration", "5", "--protocol", bench_protocol
    ).finish()
    assert code == 1, lines
    assert lines[-1].startswith("Error: ") and advice in lines[-1], lines
