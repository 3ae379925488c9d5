"""The benchmark's own figures: where a server's handler thread spends its
time, read from a real server process, and the bounds table built from it.

These run the bench's code (``tests/bench/compare.py``) on a server that
answers a few requests: they check that the report reads what it says, not
how fast anything is.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import sockdemo

BENCH = Path(__file__).resolve().parent / "bench"
sys.path.insert(0, str(BENCH))

import compare  # noqa: E402  (tests/bench/compare.py, found through BENCH)

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/task").is_dir(), reason="reads /proc/PID/task (Linux)"
)

SERVER = [sys.executable, "-m", "sockdemo", "server", "--log-level", "warning"]


def answer_some(server: compare.ServerProcess, count: int) -> None:
    with sockdemo.Client("127.0.0.1", server.port, timeout=30) as client:
        for i in range(count):
            assert client.request(f"m{i}") == f"Server received: m{i}"


def test_a_handler_servers_thread_time_is_read_from_its_handler_threads() -> None:
    server = compare.ServerProcess([*SERVER, "--handler", "handlers:busy"], "raw")
    try:
        before = server.handler_thread_times()
        answer_some(server, 300)
        on_core, waiting = (a - b for a, b in zip(server.handler_thread_times(), before))
    finally:
        server.stop()
    # 300 calls of about 10 µs each ran on the handler thread.
    assert on_core > 0
    assert waiting >= 0
    assert server.proc.stdout is not None and server.proc.stdout.closed


def test_an_echo_server_has_no_handler_thread_to_read() -> None:
    server = compare.ServerProcess(SERVER, "raw")
    try:
        answer_some(server, 10)
        assert server.handler_thread_times() == (0.0, 0.0)
    finally:
        server.stop()


def sample(rps: float, cpu_us: float, load_cpu_us: float, **measured: float) -> compare.Sample:
    """A round's figures: what the bounds table reads, the rest plausible."""
    return compare.Sample(
        rps=rps,
        mib_s=rps * 64 / 2**20,
        p99_ms=4.0,
        cpu_us_per_request=cpu_us,
        peak_rss_mib=26.0,
        errors=0,
        load_cpu_us_per_request=load_cpu_us,
        **measured,
    )


def test_the_bounds_table_says_where_the_handler_threads_time_went() -> None:
    workload = next(w for w in compare.WORKLOADS if w.handler in compare.BOUNDED_HANDLERS)
    served = compare.Row(workload, "sockdemo + handler")
    echo = compare.Row(workload, "sockdemo echo (ceiling)")
    # 50k requests/s of 10 µs calls: half of one core in calls; the thread
    # was on a core 80% of the time, runnable but waiting 15%.
    served.by_round[0] = sample(
        50_000, 30.0, 8.0, call_us=10.0, handler_on_core=0.8, handler_waiting=0.15
    )
    # The echo's network work: 5 µs of server and 5 of load CPU a request.
    echo.by_round[0] = sample(140_000, 5.0, 5.0)
    lines = compare.bounds([served, echo])
    row = next(line for line in lines if line.startswith(f"| {workload.name} |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    cores = len(os.sched_getaffinity(0))
    machine_bound = cores * 1e6 / (10 + 10)
    assert cells[1:5] == ["10.0 (10.0-10.0)", "100,000", "50,000", "0.50 (0.50-0.50)"]
    assert cells[5:7] == ["10.0", f"{machine_bound:,.0f}"]
    share = f"{50_000 / machine_bound:.2f}"
    assert cells[7] == f"{share} ({share}-{share})"
    # On a core, waiting for one, waiting for work; then the calls' share
    # of its time on a core (0.5 of a core in calls, of 0.8).
    assert cells[8:] == [
        "0.80 (0.80-0.80)",
        "0.15 (0.15-0.15)",
        "0.05 (0.05-0.05)",
        "0.62 (0.62-0.62)",
    ]
