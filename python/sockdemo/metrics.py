"""``--metrics-port``: the server's counters at ``/metrics``, for Prometheus.

The counters and their text format are the Rust core's (``Server.metrics()``,
made with the ``prometheus`` crate); this module only serves them over HTTP,
with the standard library's ``http.server`` on a thread of its own, bounded
(timeouts, a cap on scrapes at once) and on 127.0.0.1 unless told otherwise
(``--metrics-host``): the counters are nobody else's business. Under
``--workers``, each worker serves its own on a private port and the
supervisor's endpoint adds them up (:func:`merge`), so Prometheus scrapes one
address for the whole server.
"""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

#: What Prometheus expects of the classic text format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


#: Scrapes served at once; more are turned away at once rather than queued.
MAX_SCRAPES = 64
#: How long a scraper may take to send its request or read the answer.
SCRAPE_TIMEOUT = 2.0


class _Endpoint(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` with bounds: a real listen backlog, at most
    :data:`MAX_SCRAPES` threads, and no traceback for a scraper that goes
    away (a reset is the scraper's business, not the operator's)."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.slots = threading.BoundedSemaphore(MAX_SCRAPES)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)  # busy: the scraper retries
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a scraper that reset or timed out: nothing to tell anyone


def serve(host: str, port: int, collect: Callable[[], str]) -> ThreadingHTTPServer:
    """Serves ``collect()`` at ``http://host:port/metrics`` on a daemon thread;
    returns the HTTP server (its ``server_address`` has the real port)."""

    class Metrics(BaseHTTPRequestHandler):
        # A socket timeout for each scrape: a scraper that stalls cannot
        # hold a thread.
        timeout = SCRAPE_TIMEOUT

        def do_GET(self) -> None:  # http.server's naming
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404, "only /metrics is here")
                return
            body = collect().encode()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # a scrape every few seconds is not news

    httpd = _Endpoint((host, port), Metrics)
    threading.Thread(target=httpd.serve_forever, name="sockdemo-metrics", daemon=True).start()
    return httpd


def fetch(address: tuple[str, int], timeout: float = 5.0) -> str:
    """Scrapes one endpoint."""
    url = f"http://{address[0]}:{address[1]}/metrics"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text: str = response.read().decode()
        return text


def merge(texts: Iterable[str]) -> str:
    """Adds up several scrapes of the same server program: every sample with
    the same name and labels is summed (counters, gauges and histogram
    buckets alike add up across workers), families kept in their order."""
    comments: dict[str, list[str]] = {}
    samples: dict[str, dict[str, float]] = {}
    for text in texts:
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(maxsplit=3)
                family = parts[2] if len(parts) > 2 else ""
                kept = comments.setdefault(family, [])
                if line not in kept:
                    kept.append(line)
                samples.setdefault(family, {})
                continue
            key, _, value = line.rpartition(" ")
            name = key.split("{", 1)[0]
            family = next((f for f in samples if _belongs(name, f)), name)
            totals = samples.setdefault(family, {})
            totals[key] = totals.get(key, 0.0) + float(value)
    lines = []
    for family, totals in samples.items():
        lines += comments.get(family, [])
        lines += [f"{key} {_number(value)}" for key, value in totals.items()]
    return "\n".join(lines) + "\n"


def _belongs(name: str, family: str) -> bool:
    """Is sample ``name`` part of ``family`` (a histogram's _bucket, _sum, _count)?"""
    return name == family or (
        name.startswith(family) and name[len(family) :] in ("_bucket", "_sum", "_count")
    )


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)
