"""The fan-out benchmark: one speaker, LISTENERS listeners, MESSAGES framed
messages relayed by the server to every listener; deliveries per second
until the last listener has them all.

Contenders, each run ROUNDS times in turn on the same machine: a sync
session whose ``received`` broadcasts (``sockdemo --session``), the same as
an ``async def`` session on uvloop, a uvloop streams relay written the plain
way, and a plain tokio relay with no Python (the practical limit).

    python tests/bench/fanout.py [--rounds 3] [--listeners 100] [--messages 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import machine  # tests/bench/machine.py, beside this script

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RELEASE = ROOT / "target" / "release" / "examples"
SOCKDEMO = [sys.executable, "-m", "sockdemo", "server", "--max-clients", "10000",
            "--log-level", "warning", "--protocol", "framed"]  # fmt: skip
CONTENDERS = {
    "sockdemo session": [*SOCKDEMO, "--session", "handlers:Relay"],
    "sockdemo.aio session": [*SOCKDEMO, "--session", "handlers:relay", "--loop", "uvloop"],
    "uvloop relay": [sys.executable, str(HERE / "py_servers.py"), "--kind", "uvloop-relay"],
    "tokio relay": [str(RELEASE / "tokio_relay")],
}


def run_once(argv: list[str], args: argparse.Namespace) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), *sys.path]))
    server = subprocess.Popen(
        [*argv, "--port", "0"], stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env
    )
    try:
        assert server.stdout is not None
        first = server.stdout.readline().strip()
        if "listening on" not in first:
            raise RuntimeError(f"{argv[0]} did not start: {first!r}")
        port = first.rsplit(":", 1)[1]
        done = subprocess.run(
            [str(RELEASE / "fanout_client"), "--port", port,
             "--listeners", str(args.listeners), "--messages", str(args.messages),
             "--size", str(args.size)],
            capture_output=True, text=True, check=True, timeout=300,
        )  # fmt: skip
        result: dict[str, float] = json.loads(done.stdout)
        return result
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if server.stdout is not None:
            server.stdout.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--listeners", type=int, default=100)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="1 round: a smoke test")
    # `make bench ARGS=...` hands compare.py's options here too.
    args, _ = parser.parse_known_args()
    if args.quick:
        args.rounds = 1
    figures: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for round_ in range(1, args.rounds + 1):
        for name, argv in CONTENDERS.items():
            result = run_once(argv, args)
            complete = f"{int(result['complete'])}/{args.listeners}"
            print(
                f"  round {round_}: {name:<22} {result['deliveries_per_second']:>12,.0f} "
                f"deliveries/s  ({complete} listeners complete)",
                file=sys.stderr,
                flush=True,
            )
            figures[name].append(result["deliveries_per_second"])
    medians = {name: statistics.median(values) for name, values in figures.items()}
    uvloop, tokio = medians["uvloop relay"], medians["tokio relay"]
    print(
        f"\nFan-out: 1 speaker, {args.listeners} listeners, {args.messages:,} framed "
        f"{args.size} B messages, {args.rounds} rounds (median); {machine.describe()}\n"
    )
    print("| relay | deliveries/s (median) | spread | vs uvloop relay | vs tokio relay |")
    print("|---|---:|---:|---:|---:|")
    for name, values in figures.items():
        spread = f"{min(values):,.0f}-{max(values):,.0f}"
        print(
            f"| {name} | {medians[name]:,.0f} | {spread} | "
            f"{medians[name] / uvloop:.2f} | {medians[name] / tokio:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
