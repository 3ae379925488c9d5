"""Framed messages over a lossy link, every reply checked byte for byte.

Kernel netem is not available everywhere, but a private network namespace
(`unshare -n`) with a token-bucket filter (`tc qdisc ... tbf`) of small rate
and burst on its loopback drops the packets that overflow the bucket, so TCP
retransmits. Server and clients run inside that namespace; the test skips,
saying why, where namespaces or `tc` are not permitted.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

# Loopback up, an Ethernet-sized MTU, and a small bucket: a quarter or more
# of the packets overflow it and are dropped.
LINK = (
    "ip link set lo up && ip link set lo mtu 1500 && "
    "tc qdisc add dev lo root tbf rate 16mbit burst 16kb latency 20ms"
)

CLIENTS = r"""
import random, socket, struct, sys, threading
import sockdemo

LIMIT = 64 * 1024
server = sockdemo.Server(port=0, protocol="framed", max_message_size=LIMIT, max_clients=10)
server.start()
port = server.server_address[1]
prefix = sockdemo.DEFAULT_PREFIX.encode()
failures = []

def frame(payload):
    return struct.pack("!I", len(payload)) + payload

def read_exactly(sock, n):
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return bytes(data)

def client(seed):
    rng = random.Random(seed)
    # The empty message and the largest allowed one, then random sizes.
    sizes = [0, LIMIT - len(prefix)] + [rng.randrange(0, LIMIT - len(prefix)) for _ in range(10)]
    rng.shuffle(sizes)
    messages = [bytes(rng.randrange(256) for _ in range(n)) for n in sizes]
    stream = b"".join(frame(m) for m in messages)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            def send():
                at = 0
                while at < len(stream):  # random chunks
                    n = rng.randrange(1, 20000)
                    sock.sendall(stream[at : at + n])
                    at += n
            sender = threading.Thread(target=send)
            sender.start()
            for m in messages:
                (length,) = struct.unpack("!I", read_exactly(sock, 4))
                if read_exactly(sock, length) != prefix + m:
                    failures.append(f"client {seed}: a reply of {length} bytes differs")
            sender.join()
    except Exception as exc:
        failures.append(f"client {seed}: {exc!r}")

threads = [threading.Thread(target=client, args=(seed,)) for seed in range(4)]
for t in threads: t.start()
for t in threads: t.join()
server.shutdown()
stats = server.stats()
print(f"messages {stats['messages']} errors {stats['errors']}")
for failure in failures:
    print("FAILED", failure)
sys.exit(1 if failures else 0)
"""


def namespaces_allowed() -> str | None:
    """Why the test cannot run here, or None."""
    for tool in ("unshare", "ip", "tc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = subprocess.run(["unshare", "-n", "sh", "-c", LINK], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"no private network namespace with tc here: {probe.stderr.strip()}"
    return None


@pytest.mark.timeout(120)
def test_framed_messages_survive_a_lossy_link() -> None:
    reason = namespaces_allowed()
    if reason:
        pytest.skip(reason)
    script = (
        f'{LINK} && {sys.executable} -c "$CLIENTS"; status=$?; '
        "tc -s qdisc show dev lo; exit $status"
    )
    env = {"CLIENTS": CLIENTS, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    done = subprocess.run(
        ["unshare", "-n", "sh", "-c", script], capture_output=True, text=True, timeout=110, env=env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "messages 48 errors 0" in done.stdout, done.stdout
    dropped = int(re.search(r"dropped (\d+)", done.stdout).group(1))  # type: ignore[union-attr]
    # The link really was lossy: TCP had to retransmit.
    assert dropped > 0, done.stdout
