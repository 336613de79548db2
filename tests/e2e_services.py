"""Helpers for the end-to-end tests: real Prometheus and Alertmanager processes, a webhook
receiver, the Prometheus HTTP API, and the digits event stream both e2e modules replay.

Services listen on free loopback ports with their configuration and storage in a directory
of the test's own; each is ready when its ``/-/ready`` endpoint answers 200 (never after a
sleep), and ``stop()`` ends exactly the process it started (SIGTERM, then SIGKILL). A service
that exits during start-up (for instance because another process took the port between our
probe and its bind) is retried on another port.

Binaries: ``prometheus`` / ``promtool`` (Debian package ``prometheus``) and
``prometheus-alertmanager`` (Debian package ``prometheus-alertmanager``). A missing binary
fails the test with an install hint; nothing is skipped.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np
import numpy.typing as npt
import orjson
import pytest
import yaml

__all__ = [
    "DAY",
    "EMBMON",
    "Delivery",
    "DigitsStream",
    "Service",
    "ServiceStartError",
    "WebhookReceiver",
    "free_port",
    "http_ok",
    "prometheus_alerts",
    "prometheus_query",
    "prometheus_query_range",
    "prometheus_rule_groups",
    "require_binary",
    "shorten_for_durations",
    "start_alertmanager",
    "start_prometheus",
    "start_service",
    "wait_until",
    "webhook_alertmanager_config",
]

# The embmon command of the interpreter running the tests (the venv's console script).
EMBMON = str(Path(sys.executable).with_name("embmon"))
INSTALL_HINT = "install it with: apt-get install -y prometheus prometheus-alertmanager"
DAY = 86_400
_START_ATTEMPTS = 3


class ServiceStartError(RuntimeError):
    """A service exited during start-up or did not become ready in time."""


def require_binary(name: str) -> str:
    """The path of ``name`` on PATH; fails the test (not skip) with an install hint."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not on PATH; {INSTALL_HINT}", pytrace=False)
    return path


def free_port() -> int:
    """A loopback port free right now (the caller binds it soon; starts retry on a clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    condition: Callable[[], Any], *, timeout_s: float, interval_s: float = 0.2, what: str = ""
) -> Any:
    """Polls ``condition()`` until it returns something truthy, and returns it.

    Raises ``TimeoutError`` naming ``what`` after ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"not reached within {timeout_s:.0f} s: {what or condition}")
        time.sleep(interval_s)


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    """True when GET ``url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Service:
    """A started process with an HTTP endpoint; ``stop()`` ends it (and only it)."""

    name: str
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path
    _log: IO[bytes] | None = field(default=None, repr=False)

    def log_tail(self, lines: int = 30) -> str:
        return _log_tail(self.log_path, lines)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Service:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_service(
    name: str,
    command: Callable[[int], Sequence[str]],
    workdir: Path,
    *,
    ready_path: str = "/-/ready",
    timeout_s: float = 30.0,
) -> Service:
    """Starts ``command(port)`` on a free port and waits for ``GET ready_path`` to answer 200.

    Retries on a fresh port when the process exits during start-up (port taken, say).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"{name}.log"
    last_error = ""
    for _ in range(_START_ATTEMPTS):
        port = free_port()
        log = log_path.open("ab")
        process = subprocess.Popen(
            list(command(port)),
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        service = Service(name, process, f"http://127.0.0.1:{port}", log_path, log)
        deadline = time.monotonic() + timeout_s
        while process.poll() is None and time.monotonic() < deadline:
            if http_ok(service.url + ready_path, timeout_s=1.0):
                return service
            time.sleep(0.1)
        exited = process.poll() is not None
        service.stop()
        last_error = (
            f"{name} exited with code {process.returncode}"
            if exited
            else f"{name} was not ready within {timeout_s:.0f} s"
        )
        if not exited:
            break  # not a port clash: another attempt would only wait again
    raise ServiceStartError(f"{last_error}; log {log_path}:\n{_log_tail(log_path)}")


def start_prometheus(
    workdir: Path,
    config: dict[str, Any],
    *,
    data_dir: Path | None = None,
    extra_args: Sequence[str] = (),
) -> Service:
    """A real Prometheus with ``config`` (written to ``workdir/prometheus.yml``).

    ``data_dir`` defaults to ``workdir/data``; pass an existing TSDB (backfill) to serve it.
    """
    binary = require_binary("prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    storage = data_dir or workdir / "data"

    def command(port: int) -> list[str]:
        return [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={storage}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
            *extra_args,
        ]

    return start_service("prometheus", command, workdir)


def start_alertmanager(workdir: Path, config: dict[str, Any]) -> Service:
    """A real Alertmanager with ``config``; clustering off (no gossip port to clash on)."""
    binary = require_binary("prometheus-alertmanager")
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "alertmanager.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")

    def command(port: int) -> list[str]:
        return [
            binary,
            f"--config.file={config_path}",
            f"--storage.path={workdir / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ]

    return start_service("alertmanager", command, workdir)


# --- configuration rewriting --------------------------------------------------------------

_FOR = re.compile(r"^(?P<indent>\s*)for:\s*\S+\s*$", re.MULTILINE)


def shorten_for_durations(rules_text: str, duration: str = "2s") -> tuple[str, int]:
    """The rule file with every ``for:`` value replaced by ``duration``, and how many.

    A textual substitution: everything else in the file, expressions and templates included,
    stays byte for byte as shipped.
    """
    return _FOR.subn(lambda m: f"{m.group('indent')}for: {duration}", rules_text)


def webhook_alertmanager_config(
    shipped: dict[str, Any],
    webhook_base: str,
    *,
    group_wait: str = "1s",
    group_interval: str = "1s",
) -> dict[str, Any]:
    """The shipped Alertmanager configuration, pointed at a local webhook and made fast.

    Routing tree, grouping and inhibition rules stay as shipped; each receiver's webhook URL
    keeps its path but goes to ``webhook_base``; the root route's ``group_wait`` and
    ``group_interval`` are shortened (children inherit them).
    """
    config: dict[str, Any] = json.loads(json.dumps(shipped))  # deep copy
    config["route"]["group_wait"] = group_wait
    config["route"]["group_interval"] = group_interval
    for receiver in config.get("receivers", []):
        for webhook in receiver.get("webhook_configs", []):
            path = urllib.parse.urlsplit(webhook["url"]).path or "/"
            webhook["url"] = webhook_base.rstrip("/") + path
    return config


# --- webhook receiver ---------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """One notification POSTed by Alertmanager: the URL path and the JSON payload."""

    path: str
    payload: dict[str, Any]


class WebhookReceiver:
    """An HTTP server on loopback that keeps every JSON document POSTed to it."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                try:
                    payload = json.loads(body)
                except ValueError:
                    payload = {"unparsable": body.decode(errors="replace")}
                with receiver._lock:
                    receiver.deliveries.append(Delivery(self.path, payload))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def snapshot(self) -> list[Delivery]:
        with self._lock:
            return list(self.deliveries)

    def alerts(self) -> Iterator[tuple[Delivery, dict[str, Any]]]:
        """Every (delivery, alert) pair received so far."""
        for delivery in self.snapshot():
            for alert in delivery.payload.get("alerts", []):
                yield delivery, alert

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()


# --- Prometheus HTTP API ------------------------------------------------------------------


class PrometheusQueryError(AssertionError):
    """The API answered with an error (bad PromQL, for instance)."""


def _api(base_url: str, path: str, params: dict[str, str] | None = None) -> Any:
    url = base_url + path + ("?" + urllib.parse.urlencode(params) if params else "")
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            document = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        document = json.loads(exc.read() or b"{}")
    if document.get("status") != "success":
        raise PrometheusQueryError(
            f"{path} {params}: {document.get('errorType')}: {document.get('error')}"
        )
    return document["data"]


def prometheus_query(base_url: str, expr: str, at: float | None = None) -> dict[str, Any]:
    """``/api/v1/query``: ``{"resultType": ..., "result": [...]}``; raises on any error."""
    params = {"query": expr}
    if at is not None:
        params["time"] = repr(at)
    return dict(_api(base_url, "/api/v1/query", params))


def prometheus_query_range(
    base_url: str, expr: str, start: float, end: float, step: float
) -> list[dict[str, Any]]:
    """``/api/v1/query_range``: the matrix result; raises on any error."""
    params = {"query": expr, "start": repr(start), "end": repr(end), "step": repr(step)}
    return list(_api(base_url, "/api/v1/query_range", params)["result"])


def prometheus_alerts(base_url: str) -> list[dict[str, Any]]:
    """``/api/v1/alerts``: active (pending or firing) alerts."""
    return list(_api(base_url, "/api/v1/alerts")["alerts"])


def prometheus_rule_groups(base_url: str) -> list[dict[str, Any]]:
    """``/api/v1/rules``: rule groups with their last evaluation times."""
    return list(_api(base_url, "/api/v1/rules")["groups"])


# --- the digits stream --------------------------------------------------------------------

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class DigitsStream:
    """scikit-learn's bundled digits as a model's inference events (as /tmp/sc/make.py).

    Training rows build the reference; the other rows are production traffic. Each event
    carries the 64-pixel embedding, a prediction (nearest class mean of the training rows),
    the true label as target, and a few tokens (so text metrics exist). A *shifted* event is
    the broken-transform case: with probability ``shift_share`` its vector is reversed.
    """

    train_x: F32
    train_y: npt.NDArray[np.str_]
    test_x: F32
    test_y: npt.NDArray[np.str_]
    class_means: F32
    model: str = "digits"
    shift_share: float = 0.7

    @classmethod
    def load(cls, seed: int = 3) -> DigitsStream:
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = digits.data.astype(np.float32)
        y = digits.target.astype(str)
        perm = np.random.default_rng(seed).permutation(len(x))
        train, test = perm[:1200], perm[1200:]
        means = np.stack([x[train][y[train] == str(c)].mean(axis=0) for c in range(10)])
        return cls(x[train], y[train], x[test], y[test], means.astype(np.float32))

    def predict(self, vectors: F32) -> list[str]:
        d = ((vectors[:, None, :] - self.class_means[None, :, :]) ** 2).sum(axis=2)
        return [str(i) for i in d.argmin(axis=1)]

    @staticmethod
    def tokens(vector: npt.NDArray[np.float32], prediction: str) -> list[str]:
        ink = float(vector.sum())
        words = ["digit", WORDS[int(prediction)]]
        if ink > 300:
            words.append("bold")
        if float(vector[:32].sum()) > float(vector[32:].sum()):
            words.append("top-heavy")
        return words

    def reference_batch(self) -> Any:
        """The training rows as an EventBatch with predictions, targets and tokens."""
        from sketches.batch import EventBatch

        predictions = self.predict(self.train_x)
        return EventBatch(
            self.train_x,
            np.zeros(len(self.train_x)),
            tokens=[self.tokens(v, p) for v, p in zip(self.train_x, predictions, strict=True)],
            predictions=predictions,
            targets=[str(t) for t in self.train_y],
        )

    def build_reference(self, out: Path, *, rounds: int = 150) -> Path:
        """Builds, saves and returns a small reference (few rounds, sizes up to 1000)."""
        from sketches.reference import build_reference

        reference = build_reference(
            self.reference_batch(),
            self.train_y,
            method="pca-centroids",
            distance="euclidean",
            rounds=rounds,
            sizes=(10, 30, 100, 300, 1000),
            seed=0,
        )
        return reference.save(out)

    def events(
        self,
        rng: np.random.Generator,
        start: float,
        count: int,
        *,
        shifted: bool,
        spacing_s: float = DAY / 300,
    ) -> list[bytes]:
        """``count`` JSON events from ``start``, one every ``spacing_s`` seconds."""
        rows = rng.integers(len(self.test_x), size=count)
        out = []
        for i, row in enumerate(rows):
            vector = self.test_x[row].copy()
            if shifted and rng.random() < self.shift_share:
                vector = vector[::-1].copy()
            prediction = self.predict(vector[None, :])[0]
            event = {
                "timestamp": start + i * spacing_s,
                "model": self.model,
                "embedding": vector.tolist(),
                "prediction": prediction,
                "target": str(self.test_y[row]),
                "tokens": self.tokens(vector, prediction),
            }
            out.append(orjson.dumps(event))
        return out
