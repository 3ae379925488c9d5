"""Three sockdemo servers behind a real HAProxy, with the README's configuration.

HAProxy (Debian's package; ``.ci/run`` installs it) runs in TCP mode with
``send-proxy-v2`` in front of three servers started with ``--proxy-protocol``.
Two hundred asyncio clients send framed messages of random sizes through it,
and one server is killed half-way.
"""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import ROOT, Script, wait_until

HAPROXY = shutil.which("haproxy")
pytestmark = pytest.mark.skipif(
    HAPROXY is None,
    reason="HAProxy is not installed and could not be (apt-get install -y haproxy; "
    ".ci/run does this)",
)

PREFIX = b"Server received: "
FRONTEND_PORT = 65432
SERVER_PORTS = (65441, 65442, 65443)


def readme_config() -> str:
    """The ```haproxy block of README.md, as a reader would copy it."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"```haproxy\n(.*?)```", text, re.S)
    assert found, "README.md has no haproxy configuration block"
    return found.group(1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Cluster:
    frontend: int
    servers: list[Script]
    haproxy: subprocess.Popen[str]
    haproxy_log: Path

    def connected(self, server: int) -> set[tuple[str, int]]:
        """The clients a server logged as "Connected by ('HOST', PORT)"."""
        lines = self.servers[server].drain()
        return {
            (m.group(1), int(m.group(2)))
            for line in lines
            if (m := re.search(r"Connected by \('([\d.]+)', (\d+)\)", line))
        }


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    frontend = free_port()
    ports = [free_port() for _ in SERVER_PORTS]
    command = ["-m", "sockdemo", "server", "--protocol", "framed", "--proxy-protocol"]
    servers = [
        Script(*command, "--port", str(port), "--max-clients", "500", "--log-level", "info")
        for port in ports
    ]
    config = readme_config().replace(f":{FRONTEND_PORT}", f":{frontend}")
    for documented, port in zip(SERVER_PORTS, ports):
        config = config.replace(f":{documented}", f":{port}")
    path = tmp_path / "haproxy.cfg"
    path.write_text(config)
    log = tmp_path / "haproxy.log"
    haproxy = None
    try:
        # The servers listen before HAProxy's first check, which would
        # otherwise mark a slow starter DOWN and send every client elsewhere.
        for server in servers:
            server.wait_for("listening on")
        with log.open("w") as out:
            haproxy = subprocess.Popen(
                [str(HAPROXY), "-db", "-f", str(path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
        made = Cluster(frontend, servers, haproxy, log)
        # Every server has seen HAProxy's health checks (LOCAL headers), and
        # HAProxy counts every one of them UP.
        for i in range(len(servers)):
            wait_until(lambda i=i: bool(made.connected(i)), timeout=15)
        wait_until(lambda: not down_servers(log.read_text()), timeout=15)
        yield made
    finally:
        if haproxy is not None:
            haproxy.terminate()
            try:
                haproxy.wait(10)
            except subprocess.TimeoutExpired:
                haproxy.kill()
        for server in servers:
            server.kill()


def down_servers(log: str) -> set[str]:
    """The servers whose last state change in HAProxy's log is DOWN."""
    state: dict[str, str] = {}
    for name, change in re.findall(r"Server sockdemo_servers/(\w+) is (UP|DOWN)", log):
        state[name] = change
    return {name for name, change in state.items() if change == "DOWN"}


@dataclass
class ClientRecord:
    # The client's own address for each connection it made.
    addresses: list[tuple[str, int]] = field(default_factory=list)
    answered: int = 0
    # The address of each connection that broke under the client.
    broken: list[tuple[str, int]] = field(default_factory=list)


async def one_client(
    port: int, seed: int, requests: int, record: ClientRecord, progress: list[int]
) -> None:
    """Framed requests of random sizes; reconnects when the connection breaks
    and sends the unanswered request again."""
    rng = random.Random(seed)
    # Each client has an address of its own in 127/8, so the servers' logs
    # can only be telling the truth, not HAProxy's own address.
    own = f"127.1.{seed // 250}.{seed % 250 + 1}"
    while record.answered < requests:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(own, 0))
        local = writer.get_extra_info("sockname")[:2]
        record.addresses.append(local)
        try:
            while record.answered < requests:
                size = rng.randint(1, 8192)
                message = bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz ") for _ in range(size))
                writer.write(len(message).to_bytes(4, "big") + message)
                length = int.from_bytes(await reader.readexactly(4), "big")
                reply = await reader.readexactly(length)
                # A wrong answer fails the test at once.
                assert reply == PREFIX + message, (seed, size)
                record.answered += 1
                progress[0] += 1
                await asyncio.sleep(rng.random() / 100)
        except (ConnectionError, asyncio.IncompleteReadError):
            record.broken.append(local)
        finally:
            writer.close()


def test_two_hundred_clients_through_haproxy_while_a_server_dies(cluster: Cluster) -> None:
    clients, requests = 200, 20
    records = [ClientRecord() for _ in range(clients)]
    progress = [0]
    victim = 1

    async def kill_half_way() -> None:
        while progress[0] < clients * requests // 3:
            await asyncio.sleep(0.01)
        cluster.servers[victim].proc.send_signal(signal.SIGKILL)

    async def main() -> None:
        await asyncio.gather(
            kill_half_way(),
            *(
                one_client(cluster.frontend, seed, requests, records[seed], progress)
                for seed in range(clients)
            ),
        )

    asyncio.run(asyncio.wait_for(main(), 120))

    assert all(r.answered == requests for r in records)
    seen = [cluster.connected(i) for i in range(3)]
    # Each connection was logged under the client's own address, by one server.
    for record in records:
        for address in record.addresses:
            assert sum(address in s for s in seen) == 1, address
    # Only clients of the killed server noticed anything.
    broken = [address for r in records for address in r.broken]
    assert broken, "no client was connected to the server that died"
    assert set(broken) <= seen[victim]
    untouched = [r for r in records if not r.broken]
    assert len(untouched) >= clients // 2
    # HAProxy's health check took the dead server out.
    wait_until(lambda: down_servers(cluster.haproxy_log.read_text()) == {"s2"}, timeout=15)
