"""HTTP endpoint of the agent: ``/metrics`` for Prometheus, ``/healthz`` and ``/readyz`` for
Kubernetes probes. Runs in a daemon thread; the run loop reports liveness and readiness.

Optional TLS and basic auth come from a web-config file (:mod:`exporters.web_config`, the
format of Prometheus' exporter toolkit). With basic auth every path needs valid credentials
except ``/healthz`` and ``/readyz``: a kubelet ``httpGet`` probe cannot send a password from a
Secret, and the probes say only "alive" / "ready", nothing about the data. The answer to a
request without valid credentials is 401 with ``WWW-Authenticate: Basic realm="embmon"``.

With TLS each connection's handshake runs in its own worker thread with a 10 s timeout, so a
client that fails the handshake (plain HTTP on the TLS port, no or an untrusted client
certificate) or stalls in it costs only its own connection; the server goes on serving.

The listening address may be IPv4 or IPv6: ``0.0.0.0`` (the default, IPv4 only), ``::`` (every
address, IPv6 and IPv4 where the system allows dual-stack sockets), ``::1`` or ``[::1]``, a host
name (its first address). Port 0 picks a free port (see ``.port``).
"""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import sys
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .web_config import REALM, LiveWebConfig, WebConfig

__all__ = ["PROBE_PATHS", "Health", "MetricsServer"]

log = logging.getLogger(__name__)

PROBE_PATHS = frozenset({"/healthz", "/readyz"})  # never behind basic auth
HANDSHAKE_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 60.0  # a connection that sends no complete request in this time is closed


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
    """Serves the registry on ``host:port``; TLS and basic auth as ``web_config`` says (a
    web-config file; None: plain HTTP, no auth). A bad file raises
    :class:`~exporters.web_config.WebConfigError` here, before anything listens; changes to
    it, or to the files it names, apply to the next connections
    (:class:`~exporters.web_config.LiveWebConfig`)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        health: Health,
        host: str = "0.0.0.0",
        port: int = 9808,
        *,
        web_config: str | Path | None = None,
    ):
        live = LiveWebConfig(web_config) if web_config is not None else None
        plain = WebConfig("")
        config: Callable[[], WebConfig] = (lambda: live.current) if live else (lambda: plain)
        handler = _handler(registry, health, config)
        self._server = _Server(_strip_brackets(host), port, handler, config)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="embmon-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def tls(self) -> bool:
        return self._server.context is not None

    @property
    def url(self) -> str:
        """Base URL of the endpoint as bound, e.g. ``https://[::1]:9808``."""
        host = str(self._server.server_address[0])
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def failed_handshakes(self) -> int:
        """TLS handshakes that failed or timed out since the start."""
        return self._server.failed_handshakes

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()


def _strip_brackets(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        host: str,
        port: int,
        handler: type[BaseHTTPRequestHandler],
        config: Callable[[], WebConfig],
    ) -> None:
        self._config = config
        self.context = config().ssl_context  # whether it serves TLS: fixed at start
        self.failed_handshakes = 0
        self._count = threading.Lock()
        if host:  # "" stays the IPv4 wildcard, as before
            infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
            self.address_family = infos[0][0]
        super().__init__((host, port), handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6 and self.server_address[0] == "::":
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # dual stack
        socketserver.TCPServer.server_bind(self)
        # HTTPServer.server_bind would also resolve the bound address to a name (a DNS lookup
        # at start, for a name nothing here uses).
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def get_request(self) -> tuple[Any, Any]:
        sock, address = super().get_request()
        context = self._config().ssl_context  # the current one: certificates may be renewed
        if context is None:
            return sock, address
        try:  # no I/O yet: the handshake happens in the worker thread (finish_request)
            return context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            ), address
        except OSError:
            sock.close()
            raise

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            request.settimeout(HANDSHAKE_TIMEOUT_S)
            try:
                request.do_handshake()
            except OSError as exc:  # ssl.SSLError, timeouts and resets are all OSErrors
                with self._count:
                    self.failed_handshakes += 1
                log.debug("TLS handshake with %s failed: %s", client_address, exc)
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away mid-request is not worth a traceback on stderr; a bug is.
        if isinstance(sys.exc_info()[1], OSError):
            log.debug("connection from %s ended with an error", client_address, exc_info=True)
        else:
            log.exception("error serving %s", client_address)


def _handler(
    registry: CollectorRegistry, health: Health, config: Callable[[], WebConfig]
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = REQUEST_TIMEOUT_S

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            auth = config().basic_auth
            if (
                auth is not None
                and path not in PROBE_PATHS
                and not auth.check(self.headers.get("Authorization"))
            ):
                self._send(
                    401,
                    b"embmon: valid credentials required\n",
                    extra={"WWW-Authenticate": f'Basic realm="{REALM}"'},
                )
            elif path == "/metrics":
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
            self,
            status: int,
            body: bytes,
            content_type: str = "text/plain; charset=utf-8",
            extra: Mapping[str, str] | None = None,
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in {**config().headers, **(extra or {})}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # silence access logs
            return

    return Handler
