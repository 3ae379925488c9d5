"""Side-by-side benchmark: sockdemo against the servers it should beat or match.

Contenders, all speaking the same protocol (see ``py_servers.py`` and
``tokio_reference.rs``):

* **sockdemo**: ``python -m sockdemo server``;
* **tokio**: a minimal tokio echo server, the practical limit;
* **uvloop** and **asyncio**: asyncio streams, with and without uvloop;
* **socketserver**: the standard library's thread-per-client server.

Each measurement starts a fresh server process and drives it with sockdemo's
load generator (``sockdemo.bench``, closed loop, every reply checked). For
each workload the servers take turns, round after round (A B C A B C...,
in a rotated order each round), and the table shows medians. The ratio to the
tokio reference is paired: each round's figure is divided by the reference's
figure from the same round, and the median of those ratios is shown, so a
shared machine that changes speed between rounds does not skew it. Server CPU time comes
from ``/proc/PID/stat`` and peak memory from ``VmHWM`` in ``/proc/PID/status``.

A second table runs Python handlers (``handlers.py``): sockdemo with
``--handler`` against uvloop streams calling the same function inline, with
sockdemo's own echo beside them as the ceiling; its ratios are to uvloop.

Finally a Python loop of ``Client.request`` is timed against the same loop
written with the ``socket`` module, the two alternating in order, and
``sockdemo.aio`` clients against asyncio streams clients (one task, then 100
tasks), on asyncio's loop and on uvloop.

Every figure is a median with its spread (min-max over rounds); a round that
failed is counted in the table, never dropped. ``--pin`` puts the servers on
the first half of the cores and the load generator on the other half.

    python tests/bench/compare.py [--rounds 3] [--duration 3] [--quick] [--pin]

Writes ``RESULTS.md`` and ``results.png`` beside this file (``--output``).
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import machine  # tests/bench/machine.py, beside this script

import sockdemo

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
TOKIO_REFERENCE = ROOT / "target" / "release" / "examples" / "tokio_reference"


REFERENCE = "tokio (reference)"
HANDLER_REFERENCE = "uvloop + handler"
WORKERS_REFERENCE = "sockdemo --workers 1"


@dataclass(frozen=True)
class Workload:
    name: str
    connections: int
    size: int
    protocol: str = "raw"
    memory: bool = False  # the point is peak memory, not speed
    handler: str | None = None  # a function of handlers.py
    workers: bool = False  # --workers 2 against --workers 1
    prefix: str | None = None  # the reply prefix, when not the default

    @property
    def reference(self) -> str:
        if self.workers:
            return WORKERS_REFERENCE
        return HANDLER_REFERENCE if self.handler else REFERENCE

    @property
    def kind(self) -> str:
        """The table it belongs to."""
        return "workers" if self.workers else "handler" if self.handler else "echo"


WORKLOADS = [
    Workload("1 conn x 64 B", 1, 64),
    Workload("10 conn x 1 KiB", 10, 1024),
    Workload("100 conn x 1 KiB", 100, 1024),
    Workload("10 conn x 100 KiB (framed)", 10, 100 * 1024, "framed"),
    Workload("10 conn x 100 KiB (raw burst)", 10, 100 * 1024),
    Workload("9,000 conn x 64 B", 9000, 64, memory=True),
    Workload("handler, 1 conn x 64 B", 1, 64, handler="echo"),
    Workload("handler, 10 conn x 64 B", 10, 64, handler="echo"),
    Workload("handler, 100 conn x 64 B", 100, 64, handler="echo"),
    Workload("10 µs handler, 100 conn x 64 B", 100, 64, handler="busy"),
    Workload("async handler, 10 conn x 64 B", 10, 64, handler="async_echo"),
    Workload("async handler, 100 conn x 64 B", 100, 64, handler="async_echo"),
    Workload("100 µs handler, 100 conn x 64 B", 100, 64, handler="busy100", workers=True),
    # Last, so that the numbers of the others (--workloads) stay as they were.
    Workload("10 conn x 100 KiB (raw pass-through)", 10, 100 * 1024, prefix=""),
]


SOCKDEMO = [sys.executable, "-m", "sockdemo", "server", "--max-clients", "10000",
            "--log-level", "warning"]  # fmt: skip
PY_SERVERS = [sys.executable, str(HERE / "py_servers.py"), "--kind"]


def server_commands(workload: Workload) -> dict[str, list[str]]:
    """The contenders for `workload`, by name."""
    if workload.workers:
        handler = f"handlers:{workload.handler}"
        return {
            WORKERS_REFERENCE: [*SOCKDEMO, "--handler", handler, "--workers", "1"],
            "sockdemo --workers 2": [*SOCKDEMO, "--handler", handler, "--workers", "2"],
        }
    if workload.handler:
        handler = f"handlers:{workload.handler}"
        # An async def handler runs under sockdemo.aio, on uvloop like its rival.
        ours = (
            {"sockdemo.aio + handler": [*SOCKDEMO, "--handler", handler, "--loop", "uvloop"]}
            if workload.handler.startswith("async")
            else {"sockdemo + handler": [*SOCKDEMO, "--handler", handler]}
        )
        contenders = {
            **ours,
            HANDLER_REFERENCE: [*PY_SERVERS, "uvloop", "--handler", workload.handler],
            "sockdemo echo (ceiling)": SOCKDEMO,
        }
        if workload.handler == "echo":
            # The same reply through a session's `received`.
            contenders["sockdemo + session"] = [*SOCKDEMO, "--session", "handlers:EchoSession"]
    elif workload.prefix is not None:
        # The reply is the input: the reference reads 256 KiB at a time.
        contenders = {"sockdemo": SOCKDEMO, REFERENCE: [str(TOKIO_REFERENCE)]}
    else:
        contenders = {
            "sockdemo": SOCKDEMO,
            REFERENCE: [str(TOKIO_REFERENCE)],
            "uvloop": [*PY_SERVERS, "uvloop"],
            "asyncio": [*PY_SERVERS, "asyncio"],
            "socketserver": [*PY_SERVERS, "socketserver"],
        }
    try:
        import uvloop  # noqa: F401
    except ImportError:
        print("uvloop is not installed: skipping it (make bench installs it)", file=sys.stderr)
        contenders = {k: v for k, v in contenders.items() if "uvloop" not in k}
    return contenders


def pin(cores: set[int] | None) -> Callable[[], None] | None:
    """A `preexec_fn` that keeps a child process on `cores`."""
    if cores is None:
        return None
    return lambda: os.sched_setaffinity(0, cores)


class ServerProcess:
    """A contender running as a child process on a free port."""

    def __init__(self, argv: list[str], protocol: str, cores: set[int] | None = None) -> None:
        # handlers.py is importable by every contender, sockdemo's --handler included.
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), *sys.path]))
        self.proc = subprocess.Popen(
            [*argv, "--port", "0", "--protocol", protocol],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
            env=env,
            preexec_fn=pin(cores),
        )
        assert self.proc.stdout is not None
        self.reader: threading.Thread | None = None
        first = self.proc.stdout.readline().strip()
        if "listening on" not in first:
            self.stop()
            raise RuntimeError(f"{argv[0]} did not start: {first!r}")
        self.port = int(first.rsplit(":", 1)[1])
        # Keep reading so a chatty server never blocks on a full pipe.
        self.reader = threading.Thread(target=self.proc.stdout.read, daemon=True)
        self.reader.start()

    def cpu_seconds(self) -> float:
        """CPU time of the server and its child processes (``--workers``)."""
        ticks = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if int(entry) == self.proc.pid or int(fields[1]) == self.proc.pid:
                ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def handler_thread_times(self) -> tuple[float, float]:
        """Seconds the server's handler threads have spent on a core, and
        runnable but waiting for one (``/proc/PID/task/*/schedstat``): a
        handler thread that is neither is waiting for work. The server
        process's own threads: not those of ``--workers`` children."""
        on_core = waiting = 0
        tasks = f"/proc/{self.proc.pid}/task"
        for tid in os.listdir(tasks):
            try:
                with open(f"{tasks}/{tid}/comm") as comm:
                    if not comm.read().startswith("sockdemo-handle"):
                        continue
                with open(f"{tasks}/{tid}/schedstat") as schedstat:
                    ran, waited, _ = map(int, schedstat.read().split())
            except OSError:
                continue  # retired meanwhile
            on_core += ran
            waiting += waited
        return on_core / 1e9, waiting / 1e9

    def peak_rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        # The reader ends at the pipe's end, once the server has exited.
        if self.reader is not None:
            self.reader.join(10)
        if self.proc.stdout is not None and not (self.reader and self.reader.is_alive()):
            self.proc.stdout.close()


@dataclass
class Sample:
    rps: float
    mib_s: float
    p99_ms: float
    cpu_us_per_request: float
    peak_rss_mib: float
    errors: int
    # The load generator's CPU (this process) per request.
    load_cpu_us_per_request: float = float("nan")
    # A slow handler's call, timed in this process around the run: the
    # machine's speed drifts over minutes, so a bound is paired with its round.
    call_us: float = float("nan")
    # The handler threads' time during the run, as shares of its wall time:
    # on a core, and runnable but waiting for one.
    handler_on_core: float = float("nan")
    handler_waiting: float = float("nan")


@dataclass
class Row:
    workload: Workload
    server: str
    by_round: dict[int, Sample] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def samples(self) -> list[Sample]:
        return list(self.by_round.values())

    def median(self, attribute: str) -> float:
        if not self.samples:
            return float("nan")
        return statistics.median(getattr(s, attribute) for s in self.samples)

    def spread(self, attribute: str, fmt: str = ",.0f") -> str:
        """``min-max`` over rounds."""
        values = [getattr(s, attribute) for s in self.samples]
        if not values:
            return "-"
        return f"{min(values):{fmt}}-{max(values):{fmt}}"

    def ratio_to(self, reference: Row | None) -> float:
        """Median over rounds of this round's req/s over the reference's."""
        if reference is None:
            return float("nan")
        ratios = [
            sample.rps / reference.by_round[r].rps
            for r, sample in self.by_round.items()
            if r in reference.by_round and reference.by_round[r].rps > 0
        ]
        return statistics.median(ratios) if ratios else float("nan")


def measure(argv: list[str], workload: Workload, duration: float, cores: set[int] | None) -> Sample:
    if workload.prefix is not None:
        argv = [*argv, "--prefix", workload.prefix]
    server = ServerProcess(argv, workload.protocol, cores)
    try:
        cpu_before = server.cpu_seconds()
        load_before = _own_cpu_seconds()
        handler_before = server.handler_thread_times()
        started = time.monotonic()
        report = sockdemo.bench(
            "127.0.0.1",
            server.port,
            connections=workload.connections,
            size=workload.size,
            duration=duration,
            protocol=workload.protocol,
            **({} if workload.prefix is None else {"prefix": workload.prefix}),
        )
        cpu = server.cpu_seconds() - cpu_before
        load_cpu = _own_cpu_seconds() - load_before
        wall = time.monotonic() - started
        on_core, waiting = (
            after - before for after, before in zip(server.handler_thread_times(), handler_before)
        )
        peak = server.peak_rss_mib()
    finally:
        server.stop()
    return Sample(
        rps=report["requests_per_second"],
        mib_s=report["mib_per_second"],
        p99_ms=report["latency_ms"]["p99"],
        cpu_us_per_request=cpu / max(report["requests"], 1) * 1e6,
        peak_rss_mib=peak,
        errors=report["errors"],
        load_cpu_us_per_request=load_cpu / max(report["requests"], 1) * 1e6,
        handler_on_core=on_core / wall,
        handler_waiting=waiting / wall,
    )


def _own_cpu_seconds() -> float:
    """CPU time of this process, whose threads are the load generator's."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


#: Handlers slow enough that the handler, not the network, should set the
#: pace: the bench reports how close sockdemo comes to their bounds.
BOUNDED_HANDLERS = ("busy",)


def handler_microseconds(name: str, size: int, rounds: int = 3, calls: int = 5_000) -> float:
    """What one call of handlers.py's `name` costs in this interpreter, on a
    message of `size` bytes: the best of `rounds` timings of `calls` calls."""
    import timeit

    import handlers

    function = getattr(handlers, name)
    message = "x" * size
    best = min(timeit.repeat(lambda: function(message), number=calls, repeat=rounds))
    return best / calls * 1e6


def with_spread(values: list[float]) -> str:
    """``median (min-max)`` of ratios."""
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def bounds(rows: list[Row]) -> list[str]:
    """How close the slow handler comes to what the machine allows.

    Two bounds. One core doing nothing but the handler's calls, the other
    cores doing all the rest: the most a server with one interpreter could
    give. And the whole machine: every request also costs the network work
    of the server and of the load generator, which share these cores;
    sockdemo's own echo on the same workload measures that work (server and
    load CPU per request), so the cores can serve at most
    cores / (handler + that work). That work costs more per request at the
    handler's lower rate (fewer events per wake-up), so the machine bound
    is an optimistic one.

    Each round is set against its own bounds: the call timed around that
    round's run, the network work from the echo's run in the same round.
    A machine whose speed drifts between rounds (a shared one) then moves
    the bound and the figure together.

    Beside the bounds, where the handler thread's time went: on a core,
    runnable but waiting for one (the machine is full), or neither (waiting
    for work: the network side is behind); and how much of its time on a
    core the calls themselves account for (the rest is the thread's own
    overhead: taking jobs, writing replies, waking the network threads).
    """
    by_key = {(r.workload, r.server): r for r in rows}
    cores = len(os.sched_getaffinity(0))
    lines = []
    for workload in dict.fromkeys(r.workload for r in rows):
        if workload.handler not in BOUNDED_HANDLERS:
            continue
        served = by_key.get((workload, "sockdemo + handler"))
        echo = by_key.get((workload, "sockdemo echo (ceiling)"))
        if served is None or not served.samples:
            continue
        of_one_core = [s.rps * s.call_us / 1e6 for s in served.samples]
        of_machine = []
        for r, sample in served.by_round.items():
            same_round = echo.by_round.get(r) if echo is not None else None
            if same_round is not None:
                network = same_round.cpu_us_per_request + same_round.load_cpu_us_per_request
                of_machine.append(sample.rps * (sample.call_us + network) / (cores * 1e6))
        calls_share = [
            s.rps * s.call_us / 1e6 / s.handler_on_core
            for s in served.samples
            if s.handler_on_core > 0
        ]
        call = served.median("call_us")
        line = (
            f"| {workload.name} | {call:.1f} ({served.spread('call_us', '.1f')}) "
            f"| {1e6 / call:,.0f} | {served.median('rps'):,.0f} "
            f"| {with_spread(of_one_core)}"
        )
        if of_machine:
            assert echo is not None
            network = echo.median("cpu_us_per_request") + echo.median("load_cpu_us_per_request")
            line += (
                f" | {network:.1f} | {cores * 1e6 / (call + network):,.0f} "
                f"| {with_spread(of_machine)}"
            )
        else:
            line += " | - | - | -"
        on_core = [s.handler_on_core for s in served.samples]
        waiting = [s.handler_waiting for s in served.samples]
        idle = [max(0.0, 1 - a - b) for a, b in zip(on_core, waiting)]
        line += (
            f" | {with_spread(on_core)} | {with_spread(waiting)} | {with_spread(idle)} "
            f"| {with_spread(calls_share) if calls_share else '-'} |"
        )
        lines.append(line)
    if not lines:
        return []
    return [
        "",
        f"The slow handler against its bounds: one core running nothing but the handler "
        f"(its calls timed in this process around each round's run), and the whole machine "
        f"({cores} cores), where each request also costs the network work of the server and "
        "of the load generator (CPU per request of sockdemo's echo on the same workload, both "
        "sides): at most cores / (handler + network work). Each round is set against its own "
        "bounds; medians with their spread over rounds. Then where the handler thread's time "
        "went (`/proc/PID/task/*/schedstat`, as shares of the run's wall time): on a core, "
        "runnable but waiting for one (the machine is full), or waiting for work; and the share "
        "of its time on a core that the calls account for.",
        "",
        "| workload | handler µs/call | one-core bound req/s | sockdemo + handler req/s "
        "| of one-core bound | network CPU µs/req (server + load) | machine bound req/s "
        "| of machine bound | handler thread on a core | waiting for a core "
        "| waiting for work | calls' share of its core time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *lines,
    ]


def python_loop(rounds: int, requests: int) -> tuple[float, float]:
    """Microseconds per request: `Client.request` and the same loop on `socket`."""
    message = "Hello from the client!"
    client_times: list[float] = []
    socket_times: list[float] = []

    def with_client(address: tuple[str, int]) -> None:
        with sockdemo.Client(*address) as client:
            start = time.perf_counter()
            for _ in range(requests):
                client.request(message)
            client_times.append((time.perf_counter() - start) / requests * 1e6)

    def with_socket(address: tuple[str, int]) -> None:
        with socket.create_connection(address) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            start = time.perf_counter()
            for _ in range(requests):
                sock.sendall(message.encode())
                sock.recv(1024).decode()
            socket_times.append((time.perf_counter() - start) / requests * 1e6)

    with sockdemo.Server(port=0) as server:
        server.start()
        address = server.server_address
        for round_ in range(rounds):
            # Alternate which goes first, so neither always gets a warm machine.
            order = (with_client, with_socket) if round_ % 2 == 0 else (with_socket, with_client)
            for loop in order:
                loop(address)
        server.shutdown()
    return statistics.median(client_times), statistics.median(socket_times)


@dataclass
class AsyncClients:
    """`sockdemo.aio` clients against asyncio streams clients, on one loop kind."""

    loop: str
    single_us: tuple[float, float]  # one task: sockdemo.aio, streams
    many_rps: tuple[float, float]  # 100 tasks: sockdemo.aio, streams


def async_clients(rounds: int, requests: int, tasks: int = 100) -> list[AsyncClients]:
    """One task awaiting requests in a loop (µs per request), and `tasks`
    tasks at once (requests/s), with `sockdemo.aio.connect` and with
    `asyncio.open_connection`, alternating, against one sockdemo server."""
    import asyncio

    import sockdemo.aio

    message = "Hello from the client!"
    payload = message.encode()

    async def aio_loop(address: tuple[str, int], n: int) -> None:
        async with await sockdemo.aio.connect(*address) as client:
            for _ in range(n):
                await client.request(message)

    async def streams_loop(address: tuple[str, int], n: int) -> None:
        reader, writer = await asyncio.open_connection(*address)
        for _ in range(n):
            writer.write(payload)
            await reader.read(1024)
        writer.close()
        await writer.wait_closed()

    async def timed(loop: Callable[..., Any], address: tuple[str, int], n: int, k: int) -> float:
        start = time.perf_counter()
        await asyncio.gather(*(loop(address, n) for _ in range(k)))
        return time.perf_counter() - start

    async def measure(address: tuple[str, int]) -> tuple[list[float], ...]:
        single: tuple[list[float], list[float]] = ([], [])
        many: tuple[list[float], list[float]] = ([], [])
        loops = (aio_loop, streams_loop)
        per_task = max(requests // tasks, 20)
        for round_ in range(rounds):
            order = (0, 1) if round_ % 2 == 0 else (1, 0)
            for i in order:
                single[i].append(await timed(loops[i], address, requests, 1) / requests * 1e6)
            for i in order:
                elapsed = await timed(loops[i], address, per_task, tasks)
                many[i].append(per_task * tasks / elapsed)
        return (*single, *many)

    kinds = ["asyncio"]
    try:
        import uvloop

        kinds.append("uvloop")
    except ImportError:
        uvloop = None
    results = []
    with sockdemo.Server(port=0, max_clients=1000) as server:
        server.start()
        for kind in kinds:
            new_loop = uvloop.new_event_loop if kind == "uvloop" else asyncio.new_event_loop
            loop = new_loop()
            try:
                aio_1, streams_1, aio_n, streams_n = loop.run_until_complete(
                    measure(server.server_address)
                )
            finally:
                loop.close()
            med = statistics.median
            results.append(
                AsyncClients(kind, (med(aio_1), med(streams_1)), (med(aio_n), med(streams_n)))
            )
        server.shutdown()
    return results


def table(rows: list[Row], kind: str) -> list[str]:
    handlers = kind == "handler"
    reference = {"echo": "vs tokio", "handler": "vs uvloop + handler", "workers": "vs 1 worker"}
    lines = [
        "| workload | server | req/s (median) | spread | "
        + reference[kind]
        + (" | vs sockdemo echo" if handlers else "")
        + " | MiB/s | p99 ms | p99 spread | server CPU µs/req | peak RSS MiB | errors "
        "| failed rounds |",
        "|---|---|---:|---:|" + ("---:|---:|" if handlers else "---:|") + "---:|---:|---:|---:|"
        "---:|---:|---:|",
    ]
    by_key = {(r.workload, r.server): r for r in rows}
    for row in rows:
        if row.workload.kind != kind:
            continue
        ratio = row.ratio_to(by_key.get((row.workload, row.workload.reference)))
        ratios = f"{ratio:.2f}"
        if handlers:
            ceiling = row.ratio_to(by_key.get((row.workload, "sockdemo echo (ceiling)")))
            ratios += f" | {ceiling:.2f}"
        peak = max((s.peak_rss_mib for s in row.samples), default=float("nan"))
        lines.append(
            f"| {row.workload.name} | {row.server} | {row.median('rps'):,.0f} "
            f"| {row.spread('rps')} | {ratios} | {row.median('mib_s'):,.1f} "
            f"| {row.median('p99_ms'):.3f} | {row.spread('p99_ms', '.3f')} "
            f"| {row.median('cpu_us_per_request'):.1f} | {peak:.1f} "
            f"| {sum(s.errors for s in row.samples)} | {len(row.failures)} |"
        )
    return lines


def markdown(
    rows: list[Row],
    loop: tuple[float, float] | None,
    clients: list[AsyncClients],
    args: argparse.Namespace,
) -> str:
    lines = [
        "# sockdemo benchmark",
        "",
        f"{machine.describe()}; {args.rounds} rounds of "
        f"{args.duration:g} s per server and workload, servers alternating; medians with "
        "their spread (min-max over rounds), and ratios paired round by round. "
        "Load from `sockdemo.bench` (closed loop, every reply checked) on the same machine"
        + (", pinned to other cores than the servers." if args.pin else ", cores shared."),
        "",
        "## Echo",
        "",
        *table(rows, "echo"),
        "",
        "## Python handler",
        "",
        "The reply computed by a Python function (`tests/bench/handlers.py`: `echo` returns "
        "the prefix plus the message; the 10 µs one loops first). sockdemo runs it with "
        "`--handler`; uvloop streams call it inline. The `async def` one "
        "(`async_echo`) runs under `sockdemo.aio` on uvloop (`--handler ... --loop uvloop`); "
        "uvloop streams await it inline.",
        "",
        *table(rows, "handler"),
        *bounds(rows),
        "",
        "## Worker processes",
        "",
        "A CPU-bound handler (`busy100`: about 100 µs of Python per message) with "
        "`--workers 2` against `--workers 1`: the interpreter lock binds each process to one "
        "core, so a second worker is a second core.",
        "",
        *table(rows, "workers"),
    ]
    failures = [(r, f) for r in rows for f in r.failures]
    if failures:
        lines += ["", "Failed rounds:", ""]
        lines += [f"- {r.workload.name}, {r.server}: {f}" for r, f in failures]
    if loop is not None:
        client, plain = loop
        lines += [
            "",
            "Python loop of 1-message requests against a sockdemo server:",
            "",
            "| loop | µs/request | ratio |",
            "|---|---:|---:|",
            f"| `socket` module (`sendall` + `recv`) | {plain:.1f} | 1.00 |",
            f"| `sockdemo.Client.request` | {client:.1f} | {client / plain:.2f} |",
        ]
    if clients:
        lines += [
            "",
            "asyncio clients against a sockdemo server: one task awaiting requests in a loop, "
            "and 100 tasks at once, with `sockdemo.aio.connect` and with asyncio streams "
            "(`open_connection`, `write` + `read`):",
            "",
            "| loop | one task: aio µs/req | streams µs/req | ratio "
            "| 100 tasks: aio req/s | streams req/s | ratio |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for c in clients:
            (aio_1, streams_1), (aio_n, streams_n) = c.single_us, c.many_rps
            lines.append(
                f"| {c.loop} | {aio_1:.1f} | {streams_1:.1f} | {aio_1 / streams_1:.2f} "
                f"| {aio_n:,.0f} | {streams_n:,.0f} | {aio_n / streams_n:.2f} |"
            )
    return "\n".join(lines) + "\n"


def chart(rows: list[Row], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart (make bench installs it)", file=sys.stderr)
        return False
    rows = [r for r in rows if not r.workload.handler and r.samples]
    if not rows:
        return False
    servers = list(dict.fromkeys(r.server for r in rows))
    speed = [w for w in dict.fromkeys(r.workload for r in rows) if not w.memory]
    memory = [w for w in dict.fromkeys(r.workload for r in rows) if w.memory]
    by_key = {(r.workload, r.server): r for r in rows}
    figure, axes = plt.subplots(1, 2, figsize=(13, 4.8), width_ratios=[3, 1])
    width = 0.8 / len(servers)
    for i, server in enumerate(servers):
        values = []
        for w in speed:
            row, ref = by_key.get((w, server)), by_key.get((w, REFERENCE))
            values.append(row.ratio_to(ref) if row else 0)
        axes[0].bar([x + i * width for x in range(len(speed))], values, width, label=server)
        if memory:
            peak = [max(s.peak_rss_mib for s in by_key[(memory[0], server)].samples)]
            axes[1].bar([i], peak, 0.8, label=server)
    axes[0].set_xticks([x + width * (len(servers) - 1) / 2 for x in range(len(speed))])
    axes[0].set_xticklabels([w.name for w in speed], fontsize=8)
    axes[0].set_ylabel("requests/s relative to tokio")
    axes[0].axhline(1.0, color="grey", linewidth=0.8)
    axes[0].legend(fontsize=8)
    axes[0].set_title("Throughput (higher is better)")
    if memory:
        axes[1].set_xticks(range(len(servers)))
        axes[1].set_xticklabels(servers, rotation=30, ha="right", fontsize=8)
        axes[1].set_ylabel("MiB")
        axes[1].set_title(f"Peak memory, {memory[0].name}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per measurement")
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s: a smoke test")
    parser.add_argument("--servers", nargs="*", help="only these contenders")
    parser.add_argument("--workloads", nargs="*", type=int, help="only these (1-based) workloads")
    parser.add_argument("--output", type=Path, default=HERE, help="where to write the results")
    parser.add_argument(
        "--pin", action="store_true", help="servers and load generator on separate cores"
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration = 1, 1.0
        # A smoke run never overwrites the committed figures.
        if args.output == HERE:
            args.output = ROOT / "bench-results"
    if not TOKIO_REFERENCE.exists():
        print("Build the reference first: cargo build --release --example tokio_reference")
        return 1
    # 9,000 connections need 9,000 descriptors in the client and in each server.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    server_cores = load_cores = None
    cores = sorted(os.sched_getaffinity(0))
    if args.pin and len(cores) >= 2:
        server_cores = set(cores[: len(cores) // 2])
        load_cores = set(cores[len(cores) // 2 :])
        os.sched_setaffinity(0, load_cores)
    elif args.pin:
        print("--pin needs at least 2 cores: running unpinned", file=sys.stderr)
        args.pin = False
    workloads = [w for i, w in enumerate(WORKLOADS, 1) if not args.workloads or i in args.workloads]
    if any(w.memory for w in workloads) and hard < 2 * 9000 + 100:
        print(f"RLIMIT_NOFILE is {hard}: skipping the 9,000-connection workload", file=sys.stderr)
        workloads = [w for w in workloads if not w.memory]

    def chosen(workload: Workload) -> dict[str, list[str]]:
        contenders = server_commands(workload)
        if args.servers:
            return {k: v for k, v in contenders.items() if any(s in k for s in args.servers)}
        return contenders

    rows = [Row(w, name) for w in workloads for name in chosen(w)]
    for workload in workloads:
        contenders = chosen(workload)
        for round_ in range(args.rounds):
            names = list(contenders)
            names = names[round_ % len(names) :] + names[: round_ % len(names)]
            for name in names:
                row = next(r for r in rows if r.workload == workload and r.server == name)
                # A slow handler's call is timed around sockdemo's run with it.
                bounded = workload.handler in BOUNDED_HANDLERS and name == "sockdemo + handler"
                timed = workload.handler if bounded else None
                try:
                    before = handler_microseconds(timed, workload.size) if timed else 0.0
                    sample = measure(contenders[name], workload, args.duration, server_cores)
                    if timed:
                        after = handler_microseconds(timed, workload.size)
                        sample.call_us = (before + after) / 2
                except Exception as exc:  # a contender that cannot take the load
                    print(f"  {workload.name:28} {name:20} failed: {exc}", file=sys.stderr)
                    row.failures.append(f"round {round_ + 1}: {exc}")
                    continue
                row.by_round[round_] = sample
                print(
                    f"  {workload.name:28} {name:20} round {round_ + 1}: {sample.rps:>10,.0f} req/s"
                    f"  {sample.peak_rss_mib:7.1f} MiB  {sample.errors} errors",
                    file=sys.stderr,
                    flush=True,
                )
    loop = python_loop(rounds=max(args.rounds, 3), requests=2000 if args.quick else 20000)
    clients = async_clients(rounds=max(args.rounds, 3), requests=2000 if args.quick else 20000)
    table = markdown(rows, loop, clients, args)
    print(table)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "RESULTS.md").write_text(table)
    drew = chart(rows, args.output / "results.png")
    print(f"Wrote {args.output / 'RESULTS.md'}" + (" and results.png" if drew else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
