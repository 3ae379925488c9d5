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

Finally a Python loop of ``Client.request`` is timed against the same loop
written with the ``socket`` module.

    python tests/bench/compare.py [--rounds 3] [--duration 3] [--quick]

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

import sockdemo

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
TOKIO_REFERENCE = ROOT / "target" / "release" / "examples" / "tokio_reference"


@dataclass(frozen=True)
class Workload:
    name: str
    connections: int
    size: int
    protocol: str = "raw"
    memory: bool = False  # the point is peak memory, not speed


WORKLOADS = [
    Workload("1 conn x 64 B", 1, 64),
    Workload("10 conn x 1 KiB", 10, 1024),
    Workload("100 conn x 1 KiB", 100, 1024),
    Workload("10 conn x 100 KiB (framed)", 10, 100 * 1024, "framed"),
    Workload("9,000 conn x 64 B", 9000, 64, memory=True),
]


def server_commands() -> dict[str, list[str]]:
    python = sys.executable
    contenders = {
        "sockdemo": [python, "-m", "sockdemo", "server", "--max-clients", "10000",
                     "--log-level", "warning"],
        "tokio (reference)": [str(TOKIO_REFERENCE)],
        "uvloop": [python, str(HERE / "py_servers.py"), "--kind", "uvloop"],
        "asyncio": [python, str(HERE / "py_servers.py"), "--kind", "asyncio"],
        "socketserver": [python, str(HERE / "py_servers.py"), "--kind", "socketserver"],
    }  # fmt: skip
    try:
        import uvloop  # noqa: F401
    except ImportError:
        print("uvloop is not installed: skipping it (make bench installs it)", file=sys.stderr)
        del contenders["uvloop"]
    return contenders


class ServerProcess:
    """A contender running as a child process on a free port."""

    def __init__(self, argv: list[str], protocol: str) -> None:
        self.proc = subprocess.Popen(
            [*argv, "--port", "0", "--protocol", protocol],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline().strip()
        if "listening on" not in first:
            self.stop()
            raise RuntimeError(f"{argv[0]} did not start: {first!r}")
        self.port = int(first.rsplit(":", 1)[1])
        # Keep reading so a chatty server never blocks on a full pipe.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

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


@dataclass
class Sample:
    rps: float
    mib_s: float
    p99_ms: float
    cpu_us_per_request: float
    peak_rss_mib: float
    errors: int


@dataclass
class Row:
    workload: Workload
    server: str
    by_round: dict[int, Sample] = field(default_factory=dict)

    @property
    def samples(self) -> list[Sample]:
        return list(self.by_round.values())

    def median(self, attribute: str) -> float:
        return statistics.median(getattr(s, attribute) for s in self.samples)

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


def measure(argv: list[str], workload: Workload, duration: float) -> Sample:
    server = ServerProcess(argv, workload.protocol)
    try:
        cpu_before = server.cpu_seconds()
        report = sockdemo.bench(
            "127.0.0.1",
            server.port,
            connections=workload.connections,
            size=workload.size,
            duration=duration,
            protocol=workload.protocol,
        )
        cpu = server.cpu_seconds() - cpu_before
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
    )


def python_loop(rounds: int, requests: int) -> tuple[float, float]:
    """Microseconds per request: `Client.request` and the same loop on `socket`."""
    message = "Hello from the client!"
    client_times: list[float] = []
    socket_times: list[float] = []
    with sockdemo.Server(port=0) as server:
        server.start()
        address = server.server_address
        for _ in range(rounds):
            with sockdemo.Client(*address) as client:
                start = time.perf_counter()
                for _ in range(requests):
                    client.request(message)
                client_times.append((time.perf_counter() - start) / requests * 1e6)
            with socket.create_connection(address) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                start = time.perf_counter()
                for _ in range(requests):
                    sock.sendall(message.encode())
                    sock.recv(1024).decode()
                socket_times.append((time.perf_counter() - start) / requests * 1e6)
        server.shutdown()
    return statistics.median(client_times), statistics.median(socket_times)


def markdown(rows: list[Row], loop: tuple[float, float] | None, args: argparse.Namespace) -> str:
    lines = [
        "# sockdemo benchmark",
        "",
        f"{os.cpu_count()} cores, Python {sys.version.split()[0]}; {args.rounds} rounds of "
        f"{args.duration:g} s per server and workload, servers alternating; medians, "
        "and ratios to tokio paired round by round. "
        "Load from `sockdemo.bench` (closed loop, every reply checked) on the same machine.",
        "",
        "| workload | server | req/s | vs tokio | MiB/s | p99 ms | server CPU µs/req "
        "| peak RSS MiB | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    reference = {r.workload: r for r in rows if r.server == "tokio (reference)"}
    for row in rows:
        rps = row.median("rps")
        peak = max(s.peak_rss_mib for s in row.samples)
        ratio = row.ratio_to(reference.get(row.workload))
        lines.append(
            f"| {row.workload.name} | {row.server} | {rps:,.0f} | {ratio:.2f} "
            f"| {row.median('mib_s'):,.1f} | {row.median('p99_ms'):.3f} "
            f"| {row.median('cpu_us_per_request'):.1f} | {peak:.1f} "
            f"| {sum(s.errors for s in row.samples)} |"
        )
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
    return "\n".join(lines) + "\n"


def chart(rows: list[Row], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart (make bench installs it)", file=sys.stderr)
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
            row, ref = by_key.get((w, server)), by_key.get((w, "tokio (reference)"))
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
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration = 1, 1.0
    if not TOKIO_REFERENCE.exists():
        print("Build the reference first: cargo build --release --example tokio_reference")
        return 1
    # 9,000 connections need 9,000 descriptors in the client and in each server.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    contenders = server_commands()
    if args.servers:
        contenders = {k: v for k, v in contenders.items() if any(s in k for s in args.servers)}
    workloads = [w for i, w in enumerate(WORKLOADS, 1) if not args.workloads or i in args.workloads]
    if any(w.memory for w in workloads) and hard < 2 * 9000 + 100:
        print(f"RLIMIT_NOFILE is {hard}: skipping the 9,000-connection workload", file=sys.stderr)
        workloads = [w for w in workloads if not w.memory]

    rows = [Row(w, name) for w in workloads for name in contenders]
    for workload in workloads:
        for round_ in range(args.rounds):
            names = list(contenders)
            names = names[round_ % len(names) :] + names[: round_ % len(names)]
            for name in names:
                row = next(r for r in rows if r.workload == workload and r.server == name)
                try:
                    sample = measure(contenders[name], workload, args.duration)
                except Exception as exc:  # a contender that cannot take the load
                    print(f"  {workload.name:28} {name:20} failed: {exc}", file=sys.stderr)
                    continue
                row.by_round[round_] = sample
                print(
                    f"  {workload.name:28} {name:20} round {round_ + 1}: {sample.rps:>10,.0f} req/s"
                    f"  {sample.peak_rss_mib:7.1f} MiB  {sample.errors} errors",
                    file=sys.stderr,
                    flush=True,
                )
    rows = [r for r in rows if r.samples]
    loop = python_loop(rounds=max(args.rounds, 3), requests=2000 if args.quick else 20000)
    table = markdown(rows, loop, args)
    print(table)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "RESULTS.md").write_text(table)
    drew = chart(rows, args.output / "results.png")
    print(f"Wrote {args.output / 'RESULTS.md'}" + (" and results.png" if drew else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
