"""HTTP endpoint of the agent: ``/metrics`` for Prometheus, ``/healthz`` and ``/readyz`` for
Kubernetes probes. Runs in a daemon thread; the run loop reports liveness and readiness.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["Health", "MetricsServer"]


class Health:
    """Liveness: the run loop ticked within ``stall_seconds``. Readiness: set by the loop."""

    def __init__(self, stall_seconds: float = 120.0, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._stall = stall_seconds
        self._last_tick = clock()
        self.ready = False

    def tick(self) -> None:
        self._last_tick = self._clock()

    def alive(self) -> bool:
        return self._clock() - self._last_tick < self._stall


class MetricsServer:
    """Serves the registry on ``host:port`` (port 0 picks a free one; see ``.port``)."""

    def __init__(
        self, registry: CollectorRegistry, health: Health, host: str = "0.0.0.0", port: int = 9808
    ):
        handler = _handler(registry, health)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="embmon-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(registry: CollectorRegistry, health: Health) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ok = health.alive()
                self._send(200 if ok else 503, b"ok\n" if ok else b"run loop stalled\n")
            elif path == "/readyz":
                ok = health.ready
                self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
            else:
                self._send(404, b"embmon: try /metrics, /healthz or /readyz\n")

        def _send(
            self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8"
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # silence access logs
            return

    return Handler
