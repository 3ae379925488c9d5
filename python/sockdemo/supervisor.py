"""``--workers``: N server processes on one port, and the supervisor that
keeps them running.

Each worker is an ordinary sockdemo server with its own listener on the same
port (``SO_REUSEPORT``); the kernel spreads new connections among them, so a
handler bound to one core by the interpreter lock gets as many cores as
there are workers. The supervisor serves nothing itself. It

* starts the workers and waits until each one listens;
* restarts a worker that dies, at once the first time and with a back-off
  doubling up to ``MAX_BACKOFF`` while it keeps dying young (within
  ``YOUNG`` of its start);
* on SIGINT or SIGTERM, asks every worker to drain (one SIGTERM each, as
  Ctrl+C asks a single server), waits, and exits; a second signal passes a
  second SIGTERM on, which stops workers at once;
* on SIGHUP, replaces the workers one at a time: the new one listens before
  the old one is asked to drain, so no connection is refused, and a new one
  that cannot start leaves the old one serving.

Workers run the command the caller gives (the command-line server's worker) with the options
the supervisor was given, passed as JSON in ``SOCKDEMO_WORKER``, in a session
of their own so that a Ctrl+C at the terminal reaches only the supervisor,
and they die with it (``PR_SET_PDEATHSIG``) should it be killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import Any, Callable

#: The longest a crashing worker waits before it is started again.
MAX_BACKOFF = 10.0
#: A worker that lived less than this died young: its next start backs off.
YOUNG = 1.0
#: How long a worker may take to start listening.
START_TIMEOUT = 30.0

WORKER_ENV = "SOCKDEMO_WORKER"

Say = Callable[[str], None]


def reserve_port(host: str, port: int) -> socket.socket:
    """Binds (without listening) ``host:port`` with ``SO_REUSEPORT``, so the
    port stays the workers' while they come and go; port 0 picks one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(infos[0][4])
    except OSError:
        sock.close()
        raise
    return sock


class Worker:
    """One worker process, its output relayed line by line."""

    def __init__(
        self, number: int, options: dict[str, Any], say: Say, command: Sequence[str]
    ) -> None:
        self.number = number
        self.started = time.monotonic()
        self.ready = threading.Event()
        self.last_line = ""
        self.leaving = False  # asked to drain: its exit is expected
        self.metrics: tuple[str, int] | None = None  # its own /metrics
        env = dict(os.environ, **{WORKER_ENV: json.dumps(options)}, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self._say = say
        threading.Thread(target=self._relay, daemon=True).start()

    def _relay(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.last_line = line
            if not self.ready.is_set() and line.startswith("Server listening on "):
                self.ready.set()
                continue
            if line.startswith("Metrics at http://") and self.metrics is None:
                host, port = line.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
                self.metrics = (host, int(port))
                continue
            self._say(f"[worker {self.number}] {line}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self) -> bool:
        """Waits until it listens; ``False`` if it died or took too long."""
        deadline = time.monotonic() + START_TIMEOUT
        while not self.ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                return False
        return True

    def drain(self) -> None:
        """Asks it to stop as a server stops on Ctrl+C: gracefully."""
        self.leaving = True
        self.signal(signal.SIGTERM)

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)


def _die_with_parent() -> None:
    """In the child: SIGTERM when the supervisor dies (Linux's prctl)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: workers outlive a killed supervisor
        pass


class Supervisor:
    """Keeps ``count`` workers serving ``options`` until told to stop."""

    def __init__(
        self,
        options: dict[str, Any],
        count: int,
        grace: float,
        say: Say,
        command: Sequence[str],
    ) -> None:
        self.command = command
        self.options = options
        self.count = count
        self.grace = grace
        self.say = say
        self.workers: list[Worker | None] = [None] * count
        self.backoff = [0.0] * count
        self.restart_at: list[float | None] = [None] * count
        # A SimpleQueue: its put() is safe in a signal handler, which may run
        # while this thread is inside get(). A Queue's put() then waits for
        # the lock its own thread holds, for ever (seen: a SIGHUP that never
        # reloaded, the supervisor stuck).
        self.events: queue.SimpleQueue[int] = queue.SimpleQueue()

    def metrics(self) -> str:
        """Every worker's counters, added up."""
        from . import metrics

        texts = []
        for worker in list(self.workers):
            if worker is not None and worker.metrics is not None:
                with contextlib.suppress(OSError):
                    texts.append(metrics.fetch(worker.metrics))
        return metrics.merge(texts)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.events.put(signum)

    def run(self, ready: Callable[[], None]) -> int:
        """Starts the workers, calls ``ready()`` once all listen, and
        supervises them until a signal says stop; the exit status."""
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        for i in range(self.count):
            worker = self.workers[i] = Worker(i + 1, self.options, self.say, self.command)
            if not worker.wait_ready():
                self.say(f"Error: worker {i + 1} could not start: {worker.last_line}")
                self._stop(at_once=True)
                return 1
        ready()
        return self._supervise()

    def _supervise(self) -> int:
        while True:
            try:
                signum = self.events.get(timeout=0.1)
            except queue.Empty:
                signum = None
            if signum in (signal.SIGINT, signal.SIGTERM):
                self.say("Server shutting down.")
                self._stop(at_once=False)
                return 0
            if signum == signal.SIGHUP:
                self._reload()
            self._tend()

    def _tend(self) -> None:
        """Restarts workers that died, each when its back-off is over."""
        now = time.monotonic()
        for i, worker in enumerate(self.workers):
            if worker is not None and worker.proc.poll() is not None and not worker.leaving:
                lived = now - worker.started
                # The first death is restarted at once; each young one after
                # it waits twice as long as the last.
                delay = self.backoff[i] if lived < YOUNG else 0.0
                self.backoff[i] = min(max(delay * 2, 0.1), MAX_BACKOFF) if lived < YOUNG else 0.0
                self.say(
                    f"Worker {i + 1} (pid {worker.pid}) exited with status "
                    f"{worker.proc.returncode} after {lived:.1f} s; restarting"
                    + (f" in {delay:.1f} s" if delay else "")
                    + "."
                )
                self.workers[i] = None
                self.restart_at[i] = now + delay
            at = self.restart_at[i]
            if self.workers[i] is None and at is not None and now >= at:
                self.restart_at[i] = None
                self.workers[i] = Worker(i + 1, self.options, self.say, self.command)

    def _reload(self) -> None:
        """Replaces the workers one at a time, never leaving the port without one."""
        self.say(f"Reloading: replacing {self.count} workers one at a time.")
        if _migrate_req() == "0":
            self.say(
                "Note: net.ipv4.tcp_migrate_req is 0, so a connection still in its handshake "
                "as a draining worker's listener closes is reset; set it to 1 for reloads "
                "that lose none."
            )
        for i, old in enumerate(self.workers):
            new = Worker(i + 1, self.options, self.say, self.command)
            if not new.wait_ready():
                self.say(
                    f"Worker {i + 1} could not be replaced, the old one keeps serving: "
                    f"{new.last_line}"
                )
                new.signal(signal.SIGKILL)
                continue
            self.workers[i] = new
            self.backoff[i] = 0.0
            if old is not None:
                old.drain()
                _wait(old, self.grace + 5)
        self.say("Reload done.")

    def _stop(self, at_once: bool) -> None:
        """Drains every worker; a second signal meanwhile, or running out of
        time, stops them at once."""
        running = [w for w in self.workers if w is not None]
        for worker in running:
            worker.drain()
        if at_once:
            for worker in running:
                worker.signal(signal.SIGTERM)  # a second SIGTERM: stop now
        deadline = time.monotonic() + self.grace + 5
        while any(w.proc.poll() is None for w in running):
            if not at_once and self._signalled():
                at_once = True
                for worker in running:
                    worker.signal(signal.SIGTERM)
            if time.monotonic() > deadline:
                for worker in running:
                    worker.signal(signal.SIGKILL)
            time.sleep(0.02)

    def _signalled(self) -> bool:
        try:
            return self.events.get_nowait() in (signal.SIGINT, signal.SIGTERM)
        except queue.Empty:
            return False


def _migrate_req() -> str | None:
    """Linux's ``net.ipv4.tcp_migrate_req`` (5.14+): whether connections queued
    on a listener that closes move to another in its SO_REUSEPORT group."""
    try:
        with open("/proc/sys/net/ipv4/tcp_migrate_req") as setting:
            return setting.read().strip()
    except OSError:
        return None


def _wait(worker: Worker, timeout: float) -> None:
    try:
        worker.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        worker.signal(signal.SIGKILL)
        worker.proc.wait()


def worker_options() -> dict[str, Any] | None:
    """The options a worker was started with, if this process is one."""
    raw = os.environ.get(WORKER_ENV)
    return None if raw is None else dict(json.loads(raw))
