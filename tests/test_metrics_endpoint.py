"""The metrics endpoint (issue #10, item 5): TLS and basic auth from a web-config file in the
exporter-toolkit format, IPv6 listen addresses, and frequent terms in labels (off, or bounded
and sanitised).

Certificates are made at test time with the ``openssl`` CLI (a throwaway CA, a server
certificate for localhost / 127.0.0.1 / ::1, client certificates from that CA and from another
one). The last test has a real Prometheus (Debian package ``prometheus``) scrape the endpoint
over TLS with basic auth; it waits on Prometheus' API, never on a fixed sleep.
"""

from __future__ import annotations

import base64
import http.client
import json
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.accounting import Accounting
from exporters.http import Health, MetricsServer
from exporters.prometheus import (
    TERM_LABEL_MAX,
    EmbmonCollector,
    ProfileCounts,
    Snapshot,
    term_label,
)
from exporters.records import SegmentKey, TextSummary, WindowRecord
from exporters.web_config import WebConfigError, load_web_config
from sketches.drift import DriftResult
from sketches.errors import EmbmonError
from tests.e2e_services import prometheus_query, start_prometheus, wait_until

USER = "prometheus"
PASSWORD = b"correct horse battery staple"
HASH = bcrypt.hashpw(PASSWORD, bcrypt.gensalt(4)).decode()  # cost 4: fast tests

# --- certificates ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # a client certificate from another CA
    stranger_key: Path
    encrypted_key: Path  # the server key under a passphrase

    def client_context(self, *, cert: bool = False, stranger: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        if cert:
            context.load_cert_chain(self.client_cert, self.client_key)
        if stranger:
            context.load_cert_chain(self.stranger_cert, self.stranger_key)
        return context


def _openssl(cwd: Path, *args: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is not on PATH; install it with: apt-get install -y openssl")
    done = subprocess.run([openssl, *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, f"openssl {' '.join(args)}:\n{done.stderr}"


_EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def _ca(cwd: Path, name: str) -> None:
    _openssl(
        cwd, "req", "-x509", "-new", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.crt",
        "-days", "2", "-subj", f"/CN=embmon test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip


def _leaf(cwd: Path, ca: str, name: str, extensions: str) -> None:
    _openssl(cwd, "req", "-new", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={name}")  # fmt: skip
    (cwd / f"{name}.ext").write_text(
        extensions + "\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    _openssl(
        cwd, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt",
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "ca")
    _ca(d, "other-ca")
    _leaf(d, "ca", "server",
          "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nextendedKeyUsage=serverAuth")  # fmt: skip
    _leaf(d, "ca", "client", "extendedKeyUsage=clientAuth")
    _leaf(d, "other-ca", "stranger", "extendedKeyUsage=clientAuth")
    _openssl(d, "pkey", "-in", "server.key", "-aes256", "-passout", "pass:pw",
             "-out", "encrypted.key")  # fmt: skip
    return Pki(
        d, d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key",
        d / "stranger.crt", d / "stranger.key", d / "encrypted.key",
    )  # fmt: skip


# --- a collector over fixed records, a server, a client ---------------------------------------

BAD_TERMS = [
    "plain",
    'say "hi"',
    "back\\slash",
    "two\nlines",
    "tab\tand\rreturn",
    "nul\x00bell\x07esc\x1b",
    "del\x7fc1\x85",
    "rtl\u202eoverride",
    "line\u2028separator",
    "lone\ud800surrogate",
    "x" * 10_000,
    "x" * 10_000 + "different tail",  # truncates to the same label as the one above
]


def _record(terms: list[str], model: str = "news") -> WindowRecord:
    return WindowRecord(
        model=model,
        segment=SegmentKey(),
        start=1_800_000_000,
        end=1_800_003_600,
        events=100,
        drift={"closest_centroid": DriftResult("hellinger", 0.2, 0.1, True)},
        closest_centroid={"c0": 1.0},
        centroid_distance={},
        reference="r1",
        frequent_terms=tuple((t, 10) for t in terms),
        text=TextSummary(
            documents=100, terms=1000, doc_length_median=10.0, term_length_median=4.0,
            distinct_terms=200.0,
        ),
    )  # fmt: skip


def _registry(terms: list[str] | None = None, *, term_labels: bool = True) -> CollectorRegistry:
    records = (_record(terms),) if terms else ()
    snapshot = Snapshot(
        version="test", reference_version="r1", reference_f1=None, window_seconds=3600.0,
        lateness_seconds=0.0, events={"news": 100}, rejected={}, replayed=0,
        windows_closed={"news": len(records)}, latest=records, lag={}, open_windows=0,
        watermark=None,
    )  # fmt: skip
    registry = CollectorRegistry()
    EmbmonCollector(lambda: snapshot, max_terms=len(terms or []), term_labels=term_labels).register(
        registry
    )
    return registry


@contextmanager
def serving(
    web_config: Path | None = None,
    host: str = "127.0.0.1",
    registry: CollectorRegistry | None = None,
    health: Health | None = None,
) -> Iterator[MetricsServer]:
    server = MetricsServer(
        registry or _registry(), health or Health(), host, 0, web_config=web_config
    ).start()
    try:
        yield server
    finally:
        server.stop()


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: str


def get(
    server: MetricsServer,
    path: str = "/metrics",
    *,
    context: ssl.SSLContext | None = None,
    authorization: str | None = None,
    host: str | None = None,
) -> Answer:
    host = host or "127.0.0.1"
    connection: http.client.HTTPConnection
    if context is not None:
        connection = http.client.HTTPSConnection(host, server.port, timeout=10, context=context)
    else:
        connection = http.client.HTTPConnection(host, server.port, timeout=10)
    try:
        headers = {"Authorization": authorization} if authorization is not None else {}
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return Answer(
            response.status,
            {k.lower(): v for k, v in response.getheaders()},
            response.read().decode(),
        )
    finally:
        connection.close()


def basic(user: str, password: bytes) -> str:
    return "Basic " + base64.b64encode(user.encode() + b":" + password).decode()


def write_config(directory: Path, document: Any, name: str = "web.yml") -> Path:
    path = directory / name
    text = document if isinstance(document, str) else yaml.safe_dump(document)
    path.write_text(text, encoding="utf-8")
    return path


def tls_config(pki: Pki, **extra: Any) -> dict[str, Any]:
    return {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key), **extra}


# --- TLS --------------------------------------------------------------------------------------


def test_without_web_config_the_endpoint_is_plain_http_and_open() -> None:
    with serving() as server:
        assert server.url == f"http://127.0.0.1:{server.port}" and not server.tls
        answer = get(server)
        assert answer.status == 200 and "embmon_open_windows 0.0" in answer.body
        assert get(server, "/readyz").status == 503


def test_an_empty_web_config_is_plain_http(tmp_path: Path) -> None:
    with serving(write_config(tmp_path, "")) as server:
        assert not server.tls and get(server).status == 200


def test_https_scrape_and_a_failed_handshake_does_not_stop_the_server(
    pki: Pki, tmp_path: Path
) -> None:
    config = write_config(tmp_path, {"tls_server_config": tls_config(pki)})
    with serving(config) as server:
        assert server.url == f"https://127.0.0.1:{server.port}"
        answer = get(server, context=pki.client_context())
        assert answer.status == 200 and "embmon_open_windows 0.0" in answer.body
        # Plain HTTP to the TLS port, and a client that does not trust the certificate.
        with pytest.raises(OSError):
            get(server)
        with pytest.raises(ssl.SSLCertVerificationError):
            get(server, context=ssl.create_default_context())
        assert get(server, context=pki.client_context()).status == 200
        assert wait_until(lambda: server.failed_handshakes >= 2, timeout_s=5, what="counted")


def test_a_stalled_handshake_does_not_hold_up_other_clients(pki: Pki, tmp_path: Path) -> None:
    config = write_config(tmp_path, {"tls_server_config": tls_config(pki)})
    with serving(config) as server, socket.create_connection(("127.0.0.1", server.port)):
        # That connection never says hello; a scrape meanwhile is served at once.
        started = time.monotonic()
        assert get(server, context=pki.client_context()).status == 200
        assert time.monotonic() - started < 2


def test_client_certificates_when_required(pki: Pki, tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        {
            "tls_server_config": tls_config(
                pki, client_auth_type="RequireAndVerifyClientCert", client_ca_file=str(pki.ca)
            )
        },
    )
    with serving(config) as server:
        with pytest.raises(OSError):
            get(server, context=pki.client_context())  # no client certificate
        with pytest.raises(OSError):
            get(server, context=pki.client_context(stranger=True))  # from another CA
        assert get(server, context=pki.client_context(cert=True)).status == 200
        assert wait_until(lambda: server.failed_handshakes == 2, timeout_s=5, what="counted")


def test_client_certificates_verified_if_given(pki: Pki, tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        {
            "tls_server_config": tls_config(
                pki, client_auth_type="VerifyClientCertIfGiven", client_ca_file="ca.crt"
            )
        },
        name="web.yml",
    )
    # client_ca_file is relative: to the web-config file's directory.
    shutil.copy(pki.ca, tmp_path / "ca.crt")
    with serving(config) as server:
        assert get(server, context=pki.client_context()).status == 200
        assert get(server, context=pki.client_context(cert=True)).status == 200
        with pytest.raises(OSError):
            get(server, context=pki.client_context(stranger=True))


# --- basic auth -------------------------------------------------------------------------------


def test_basic_auth_right_wrong_and_missing_credentials(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"basic_auth_users": {USER: HASH, "other": HASH}})
    with serving(config) as server:
        missing = get(server)
        assert missing.status == 401
        assert missing.headers["www-authenticate"] == 'Basic realm="embmon"'
        assert "embmon_" not in missing.body
        for wrong in [
            basic(USER, b"wrong"),
            basic("nobody", PASSWORD),
            basic(USER, PASSWORD + b"x"),
            basic(USER, PASSWORD + b"x" * 100),  # longer than bcrypt reads
            "Basic !!!not-base64",
            "Basic " + base64.b64encode(USER.encode()).decode(),  # no colon
            "Bearer " + base64.b64encode(USER.encode() + b":" + PASSWORD).decode(),
        ]:
            answer = get(server, authorization=wrong)
            assert answer.status == 401, wrong
            assert answer.headers["www-authenticate"] == 'Basic realm="embmon"'
        right = get(server, authorization=basic(USER, PASSWORD))
        assert right.status == 200 and "embmon_open_windows" in right.body
        assert get(server, authorization=basic("other", PASSWORD)).status == 200
        # Every path but the probes is behind the password, unknown ones too.
        assert get(server, "/nothing").status == 401
        assert get(server, "/nothing", authorization=basic(USER, PASSWORD)).status == 404
        assert get(server, "/metrics?x=1").status == 401


def test_probes_need_no_credentials(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"basic_auth_users": {USER: HASH}})
    health = Health()
    with serving(config, health=health) as server:
        assert get(server, "/healthz").status == 200
        assert get(server, "/readyz").status == 503
        health.ready = True
        assert get(server, "/readyz").status == 200
        assert get(server, "/readyz", authorization=basic(USER, b"wrong")).status == 200


def test_a_successful_check_is_cached_and_a_failed_one_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[bytes] = []
    checkpw = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(password)
        return checkpw(password, hashed)

    auth = load_web_config(write_config(tmp_path, {"basic_auth_users": {USER: HASH}})).basic_auth
    assert auth is not None
    monkeypatch.setattr(bcrypt, "checkpw", counting)  # the module web_config calls
    for _ in range(5):
        assert auth.check(basic(USER, PASSWORD))
    assert len(calls) == 1
    for _ in range(3):
        assert not auth.check(basic(USER, b"wrong"))
        assert not auth.check(basic("nobody", PASSWORD))  # checked against a dummy hash
    assert len(calls) == 7
    assert auth.check(basic(USER, PASSWORD)) and len(calls) == 7
    assert PASSWORD not in repr(vars(auth)).encode()  # the cache holds an HMAC only


def test_tls_and_basic_auth_together(pki: Pki, tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        {
            "tls_server_config": tls_config(pki, min_version="TLS13"),
            "basic_auth_users": {USER: HASH},
            "http_server_config": {"headers": {"X-Content-Type-Options": "nosniff"}},
        },
    )
    with serving(config) as server:
        context = pki.client_context()
        assert get(server, context=context).status == 401
        tls12 = pki.client_context()
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2  # below min_version
        with pytest.raises(ssl.SSLError):
            get(server, context=tls12, authorization=basic(USER, PASSWORD))
        ok = get(server, context=context, authorization=basic(USER, PASSWORD))
        assert ok.status == 200 and ok.headers["x-content-type-options"] == "nosniff"
        assert get(server, "/healthz", context=context).status == 200


# --- bad web-config files ---------------------------------------------------------------------

SECRET_LINE = "$2y$10$SECRETSECRETSECRET"
KEY_MATERIAL = "TOPSECRETKEYMATERIAL"


def _bad_configs(pki: Pki, tmp: Path) -> list[tuple[str, Any, str]]:
    garbage_key = tmp / "garbage.key"
    garbage_key.write_text(
        f"-----BEGIN PRIVATE KEY-----\n{KEY_MATERIAL}\n-----END PRIVATE KEY-----\n"
    )
    tls = tls_config(pki)
    return [
        ("old node_exporter name", {"tls_config": tls}, "tls_config: unknown key"),
        ("top-level list", "- a\n- b\n", "expected a mapping"),
        ("no key_file", {"tls_server_config": {"cert_file": tls["cert_file"]}}, "key_file"),
        ("unknown tls key", {"tls_server_config": {**tls, "ciphers": "x"}}, ".ciphers"),
        (
            "toolkit key not implemented",
            {"tls_server_config": {**tls, "cipher_suites": ["TLS_AES_128_GCM_SHA256"]}},
            "cipher_suites: part of the exporter-toolkit format, not supported",
        ),
        ("rate limit", {"rate_limit": {"interval": "1s", "burst": 1}}, "rate_limit"),
        (
            "inline key",
            {"tls_server_config": {"cert": "x", "key": f"{KEY_MATERIAL}"}},
            "tls_server_config.cert",
        ),
        (
            "unverified client certs",
            {"tls_server_config": {**tls, "client_auth_type": "RequireAnyClientCert"}},
            "client_auth_type: RequireAnyClientCert accepts unverified",
        ),
        (
            "client auth typo",
            {"tls_server_config": {**tls, "client_auth_type": "RequireClientCert"}},
            "client_auth_type: expected one of",
        ),
        (
            "ca without client auth",
            {"tls_server_config": {**tls, "client_ca_file": str(pki.ca)}},
            "client_ca_file: set without",
        ),
        (
            "client auth without ca",
            {"tls_server_config": {**tls, "client_auth_type": "RequireAndVerifyClientCert"}},
            "client_ca_file: required",
        ),
        (
            "version name",
            {"tls_server_config": {**tls, "min_version": "TLS1.2"}},
            "min_version: expected one of TLS10, TLS11, TLS12, TLS13",
        ),
        (
            "versions crossed",
            {"tls_server_config": {**tls, "min_version": "TLS13", "max_version": "TLS12"}},
            "min_version: is above max_version",
        ),
        (
            "missing cert file",
            {"tls_server_config": {**tls, "cert_file": "nowhere.crt"}},
            "cert_file: no such file",
        ),
        (
            "key file of garbage",
            {"tls_server_config": {**tls, "key_file": str(garbage_key)}},
            "cannot load the certificate and key",
        ),
        (
            "key of another certificate",
            {"tls_server_config": {**tls, "key_file": str(pki.client_key)}},
            "cannot load the certificate and key",
        ),
        (
            "encrypted key",
            {"tls_server_config": {**tls, "key_file": str(pki.encrypted_key)}},
            "key_file: the key is encrypted",
        ),
        (
            "plain password instead of a hash",
            {"basic_auth_users": {"alice": SECRET_LINE}},
            "basic_auth_users.alice: not a bcrypt hash",
        ),
        (
            "hash of a number",
            {"basic_auth_users": {"alice": 12345}},
            "basic_auth_users.alice: not a bcrypt hash",
        ),
        (
            "colon in a user name",
            {"basic_auth_users": {"a:b": HASH}},
            "cannot hold ':'",
        ),
        (
            "yaml error on a secret line",
            f"basic_auth_users:\n  alice: {SECRET_LINE}: [\n",
            "is not valid YAML",
        ),
        (
            "header value",
            {"http_server_config": {"headers": {"X-Frame-Options": "allowall"}}},
            "headers.X-Frame-Options: expected one of deny, sameorigin",
        ),
        (
            "unknown header",
            {"http_server_config": {"headers": {"Set-Cookie": "a=b"}}},
            "headers.Set-Cookie: unknown key",
        ),
    ]


def _served_cn(server: MetricsServer, context: ssl.SSLContext) -> str:
    """The common name of the certificate the server presents to a new connection."""
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        subject = dict(pair[0] for pair in tls.getpeercert()["subject"])
        return str(subject["commonName"])


def _logged(
    server: MetricsServer, context: ssl.SSLContext, caplog: pytest.LogCaptureFixture, text: str
) -> bool:
    """After one more connection (the config is looked at when one comes), is ``text`` logged?"""
    get(server, "/healthz", context=context)
    return text in caplog.text


def test_a_renewed_certificate_and_a_new_user_apply_without_a_restart(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _leaf(pki.dir, "ca", "renewed",
          "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth")  # fmt: skip
    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    shutil.copy(pki.server_cert, cert)
    shutil.copy(pki.server_key, key)
    tls = {"cert_file": str(cert), "key_file": str(key)}
    config = write_config(tmp_path, {"tls_server_config": tls, "basic_auth_users": {USER: HASH}})
    context = pki.client_context()
    with serving(config) as server:
        assert _served_cn(server, context) == "server"
        assert get(server, context=context, authorization=basic(USER, PASSWORD)).status == 200
        # The key first: until the certificate follows, the pair does not load and the last
        # good config keeps serving.
        shutil.copy(pki.dir / "renewed.key", key)
        wait_until(lambda: _logged(server, context, caplog, "does not load"), timeout_s=10)
        assert _served_cn(server, context) == "server"
        shutil.copy(pki.dir / "renewed.crt", cert)
        wait_until(lambda: _served_cn(server, context) == "renewed", timeout_s=10, what="renewal")
        other = b"a new password"
        users = {"basic_auth_users": {USER: bcrypt.hashpw(other, bcrypt.gensalt(4)).decode()}}
        write_config(tmp_path, {"tls_server_config": tls, **users})
        wait_until(
            lambda: get(server, context=context, authorization=basic(USER, other)).status == 200,
            timeout_s=10,
            what="the new password",
        )
        assert get(server, context=context, authorization=basic(USER, PASSWORD)).status == 401
        write_config(tmp_path, {"basic_auth_users": users["basic_auth_users"]})  # plain HTTP
        wait_until(lambda: _logged(server, context, caplog, "restart to apply"), timeout_s=10)
        assert _served_cn(server, context) == "renewed"


def test_bad_web_config_files_give_clear_errors_without_secrets(pki: Pki, tmp_path: Path) -> None:
    cases = _bad_configs(pki, tmp_path)
    for name, document, expected in cases:
        path = write_config(tmp_path, document)
        with pytest.raises(WebConfigError) as caught:
            load_web_config(path)
        message = str(caught.value)
        assert str(path) in message, (name, message)
        assert expected in message, (name, message)
        for secret in (SECRET_LINE, "SECRETSECRET", KEY_MATERIAL, HASH):
            assert secret not in message, (name, message)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, EmbmonError)
    # A missing file, and the server refuses a bad file before it listens.
    with pytest.raises(WebConfigError, match=r"cannot read web config .*nowhere\.yml"):
        load_web_config(tmp_path / "nowhere.yml")
    bad = write_config(tmp_path, {"basic_auth_users": {"alice": "plain"}}, name="bad.yml")
    with pytest.raises(WebConfigError, match=r"bad\.yml: basic_auth_users\.alice"):
        MetricsServer(_registry(), Health(), "127.0.0.1", 0, web_config=bad)


# --- listen addresses -------------------------------------------------------------------------


def test_ipv6_listen_addresses(pki: Pki, tmp_path: Path) -> None:
    with serving(host="::1") as server:
        assert server.url == f"http://[::1]:{server.port}"
        assert get(server, host="::1").status == 200
    with serving(host="[::1]") as server:
        assert get(server, host="::1").status == 200
    with serving(host="::") as server:  # every address, IPv6 and (dual stack) IPv4
        assert get(server, host="::1").status == 200
        assert get(server, host="127.0.0.1").status == 200
    config = write_config(tmp_path, {"tls_server_config": tls_config(pki)})
    with serving(config, host="::1") as server:
        assert server.url == f"https://[::1]:{server.port}"
        assert get(server, host="::1", context=pki.client_context()).status == 200


# --- frequent terms in labels -----------------------------------------------------------------


def _label_values(registry: CollectorRegistry) -> dict[str, set[str]]:
    """Every label value of every sample, by metric family, as Prometheus' parser reads it."""
    text = generate_latest(registry).decode("utf-8")
    values: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values.setdefault(family.name, set()).update(sample.labels.values())
    return values


def test_term_labels_off_puts_no_term_in_any_label() -> None:
    terms = ["secretword", "privatename", "zzz-unique-term"]
    values = _label_values(_registry(terms, term_labels=False))
    assert "embmon_frequent_term_ratio" not in values
    assert values["embmon_drift_score"]  # the record itself is exported
    everything = {v for vs in values.values() for v in vs}
    assert not any(term in value for term in terms for value in everything)
    # On, the same record does export them.
    assert set(terms) <= _label_values(_registry(terms))["embmon_frequent_term_ratio"]


def test_term_labels_on_are_bounded_and_sanitised() -> None:
    registry = _registry(BAD_TERMS)
    text = generate_latest(registry).decode("utf-8")  # a lone surrogate would make this raise
    family = next(
        f for f in text_string_to_metric_families(text) if f.name == "embmon_frequent_term_ratio"
    )
    shares = {s.labels["term"]: s.value for s in family.samples}
    for term in BAD_TERMS:
        assert term_label(term) in shares
    assert len(shares) == len(BAD_TERMS) - 1  # the two long terms are one series ...
    long = term_label("x" * 10_000)
    assert shares[long] == pytest.approx(20 / 1000)  # ... with the sum of their shares
    assert len(long) == TERM_LABEL_MAX and long.endswith("…")
    for label in shares:
        assert len(label) <= TERM_LABEL_MAX
        assert all(c >= " " and not "\x7f" <= c <= "\x9f" for c in label), repr(label)
        assert not any("\ud800" <= c <= "\udfff" or c in "\u2028\u2029\u202e" for c in label)
    assert shares['say "hi"'] == pytest.approx(0.01)  # quotes and backslashes stay, escaped
    assert shares["back\\slash"] == pytest.approx(0.01)
    assert shares["two\ufffdlines"] == pytest.approx(0.01)
    assert shares["lone\ufffdsurrogate"] == pytest.approx(0.01)
    assert "\n" not in "".join(shares) and len(text.encode()) < 20_000


# --- a real Prometheus ------------------------------------------------------------------------


def _targets(base_url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(base_url + "/api/v1/targets", timeout=5) as response:
        return list(json.loads(response.read())["data"]["activeTargets"])


@pytest.mark.e2e
def test_real_prometheus_scrapes_over_tls_with_basic_auth(pki: Pki, tmp_path: Path) -> None:
    config = write_config(
        tmp_path, {"tls_server_config": tls_config(pki), "basic_auth_users": {USER: HASH}}
    )
    with serving(config, registry=_registry(BAD_TERMS)) as server:
        target = f"127.0.0.1:{server.port}"

        def job(name: str, password: str) -> dict[str, Any]:
            return {
                "job_name": name,
                "scheme": "https",
                "tls_config": {"ca_file": str(pki.ca)},
                "basic_auth": {"username": USER, "password": password},
                "static_configs": [{"targets": [target]}],
            }

        prometheus_config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [job("embmon", PASSWORD.decode()), job("wrong", "guess")],
        }
        with start_prometheus(tmp_path / "prometheus", prometheus_config) as prometheus:

            def scraped() -> dict[str, dict[str, Any]] | None:
                health = {t["labels"]["job"]: t for t in _targets(prometheus.url)}
                done = all(
                    health.get(j, {}).get("health") in ("up", "down") for j in ("embmon", "wrong")
                )
                return health if done else None

            targets = wait_until(scraped, timeout_s=20, what="both targets scraped")
            assert targets["embmon"]["health"] == "up", targets["embmon"]["lastError"]
            assert targets["wrong"]["health"] == "down"
            assert "401" in targets["wrong"]["lastError"]
            result = prometheus_query(prometheus.url, 'up{job="embmon"}')["result"]
            assert [r["value"][1] for r in result] == ["1"]
            terms = prometheus_query(prometheus.url, "embmon_frequent_term_ratio")["result"]
            assert {r["metric"]["term"] for r in terms} == {term_label(t) for t in BAD_TERMS}


# --- partial windows and the scaled layout's counts -------------------------------------------


def _samples(registry: CollectorRegistry) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample by sample name (counters as ``…_total``), as Prometheus' parser reads it."""
    text = generate_latest(registry).decode("utf-8")
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def _scaled_registry(accounting: Accounting, max_segments: int = 50) -> CollectorRegistry:
    registry = CollectorRegistry()
    EmbmonCollector(accounting.snapshot, max_segments=max_segments).register(registry)
    return registry


def test_window_complete_follows_the_latest_record_of_each_series() -> None:
    accounting = Accounting(window_seconds=3600.0)
    registry = _scaled_registry(accounting)
    eu = SegmentKey.of({"region": "eu"})
    partial = replace(_record([]), segment=eu, events=60, complete=False)
    accounting.closed([_record([]), partial], open_windows=0, watermark=None)
    with serving(registry=registry) as server:
        body = get(server).body
    assert "# HELP embmon_window_complete 1 if the last closed window's record is complete" in body
    assert "# TYPE embmon_window_complete gauge" in body
    assert 'embmon_window_complete{model="news",segment=""} 1.0' in body
    assert 'embmon_window_complete{model="news",segment="region=eu"} 0.0' in body
    # The same labels as every per-window gauge.
    complete = {
        tuple(sorted(labels.items())) for labels, _ in _samples(registry)["embmon_window_complete"]
    }
    events = {
        tuple(sorted(labels.items())) for labels, _ in _samples(registry)["embmon_window_events"]
    }
    assert complete == events and len(complete) == 2

    # The missing part arrives: the window is emitted again, complete, and replaces the partial.
    accounting.closed([replace(partial, events=100, complete=True)], open_windows=0, watermark=None)
    values = {labels["segment"]: v for labels, v in _samples(registry)["embmon_window_complete"]}
    assert values == {"": 1.0, "region=eu": 1.0}
    closed = _samples(registry)["embmon_windows_closed_total"]
    assert closed == [({"model": "news"}, 2.0)]  # the re-evaluation is not another window


def test_window_complete_of_a_folded_series_is_its_latest_windows() -> None:
    accounting = Accounting(window_seconds=3600.0)
    registry = _scaled_registry(accounting, max_segments=1)
    segments = [SegmentKey.of({"region": r}) for r in ("a", "b", "c")]  # admitted in this order
    first, *folded = [replace(_record([]), segment=s) for s in segments]
    later = replace(folded[1], start=first.end, end=first.end + 3600, complete=False)
    accounting.closed([first, folded[0], later], open_windows=0, watermark=None)
    values = {labels["segment"]: v for labels, v in _samples(registry)["embmon_window_complete"]}
    assert values == {"region=a": 1.0, "other": 0.0}  # c's window is the later


def test_an_older_window_emitted_again_does_not_take_its_series_back() -> None:
    accounting = Accounting(window_seconds=3600.0)
    registry = _scaled_registry(accounting)
    old = replace(_record([]), complete=False)
    new = replace(_record([]), start=old.end, end=old.end + 3600, events=7)
    accounting.closed([old, new], open_windows=0, watermark=None)
    accounting.closed([replace(old, complete=True)], open_windows=0, watermark=None)
    samples = _samples(registry)
    assert samples["embmon_window_events"] == [({"model": "news", "segment": ""}, 7.0)]
    assert samples["embmon_window_complete"] == [({"model": "news", "segment": ""}, 1.0)]


SCALED = (
    "embmon_profiles_published_total",
    "embmon_profiles_merged_total",
    "embmon_profiles_duplicate_total",
    "embmon_profiles_late_total",
    "embmon_profiles_pending",
    "embmon_partitions_owned",
)


def test_a_single_process_exports_no_profile_counts() -> None:
    accounting = Accounting(window_seconds=3600.0)
    registry = _scaled_registry(accounting)
    accounting.closed([_record([])], open_windows=0, watermark=None)
    samples = _samples(registry)
    assert not set(SCALED) & set(samples)
    assert samples["embmon_window_complete"] == [({"model": "news", "segment": ""}, 1.0)]


def test_a_collector_exports_published_and_partitions_owned() -> None:
    accounting = Accounting(window_seconds=3600.0)
    registry = _scaled_registry(accounting)
    accounting.count_profiles(published=0)
    accounting.set_partitions_owned(4)
    samples = _samples(registry)
    assert {name for name in SCALED if name in samples} == {
        "embmon_profiles_published_total",
        "embmon_partitions_owned",
    }
    assert samples["embmon_profiles_published_total"] == [({}, 0.0)]
    accounting.count_profiles(published=3)
    accounting.count_profiles(published=2)
    accounting.set_partitions_owned(2)  # after a rebalance
    samples = _samples(registry)
    assert samples["embmon_profiles_published_total"] == [({}, 5.0)]
    assert samples["embmon_partitions_owned"] == [({}, 2.0)]


def test_an_evaluator_exports_its_four_families_together() -> None:
    accounting = Accounting(window_seconds=3600.0)
    registry = _scaled_registry(accounting)
    accounting.count_profiles(merged=5)
    samples = _samples(registry)
    assert {name for name in SCALED if name in samples} == {
        "embmon_profiles_merged_total",
        "embmon_profiles_duplicate_total",
        "embmon_profiles_late_total",
        "embmon_profiles_pending",
    }
    accounting.count_profiles(merged=2, duplicate=1)
    accounting.count_profiles(late=3)
    accounting.set_profiles_pending(4)
    with serving(registry=registry) as server:
        body = get(server).body
    for line in (
        "# TYPE embmon_profiles_merged_total counter",
        "embmon_profiles_merged_total 7.0",
        "embmon_profiles_duplicate_total 1.0",
        "embmon_profiles_late_total 3.0",
        "# TYPE embmon_profiles_pending gauge",
        "embmon_profiles_pending 4.0",
    ):
        assert line in body.splitlines(), line
    assert "# HELP embmon_profiles_duplicate_total Partial window profiles dropped" in body
    accounting.set_profiles_pending(0)
    assert _samples(registry)["embmon_profiles_pending"] == [({}, 0.0)]


def test_profile_counts_only_grow() -> None:
    accounting = Accounting()
    with pytest.raises(ValueError, match="only grow"):
        accounting.count_profiles(merged=-1)
    assert accounting.snapshot().profiles is None


def test_snapshot_profile_counts_export_only_the_fields_set() -> None:
    """The collector over a hand-made snapshot (no ``Accounting``): None fields are not exported."""
    snapshot = Snapshot(
        version="test", reference_version="r1", reference_f1=None, window_seconds=3600.0,
        lateness_seconds=0.0, events={}, rejected={}, replayed=0, windows_closed={}, latest=(),
        lag={}, open_windows=0, watermark=None,
        profiles=ProfileCounts(duplicate=2), partitions_owned=0,
    )  # fmt: skip
    registry = CollectorRegistry()
    EmbmonCollector(lambda: snapshot).register(registry)
    samples = _samples(registry)
    assert {name for name in SCALED if name in samples} == {
        "embmon_profiles_duplicate_total",
        "embmon_partitions_owned",
    }
    assert samples["embmon_profiles_duplicate_total"] == [({}, 2.0)]
    assert samples["embmon_partitions_owned"] == [({}, 0.0)]
