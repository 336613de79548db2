"""TLS and basic auth for the metrics endpoint, from a web-config file in the format of
Prometheus' exporter toolkit (``--web.config.file`` of node_exporter and friends).

What embmon reads (everything else is an error naming the file and the key)::

    tls_server_config:
      cert_file: server.crt            # PEM; relative paths are relative to this file
      key_file: server.key             # PEM, unencrypted
      client_auth_type: RequireAndVerifyClientCert   # or NoClientCert (default),
                                                     #    VerifyClientCertIfGiven
      client_ca_file: ca.crt           # needed by the two verifying types, refused without
      min_version: TLS12               # TLS10 .. TLS13; default TLS12
      max_version: TLS13               # default TLS13
      prefer_server_cipher_suites: true
    http_server_config:
      http2: false                     # accepted; embmon speaks HTTP/1.1 only (ALPN says so)
      headers: {X-Content-Type-Options: nosniff}   # the toolkit's five security headers
    basic_auth_users:
      prometheus: $2y$10$...           # bcrypt hash; empty or absent: no basic auth

Keys of the toolkit format that embmon does not implement (inline ``cert`` / ``key`` /
``client_ca``, ``client_allowed_sans``, ``cipher_suites``, ``curve_preferences``,
``rate_limit``, and the non-verifying client auth types) are refused with a message saying so,
never silently ignored: a file written for the toolkit either means the same here or fails.
The file is read once, when the server is built (the toolkit re-reads it per request); restart
the agent to pick up a renewed certificate or a changed user.

An empty file, or no ``tls_server_config`` and no users, serves plain HTTP without auth.
Error messages name the file and the key; they never contain a password hash, a key or the text
of a YAML line.

Why checks are cached: a bcrypt check costs what its cost factor says (cost 10: ~70-150 ms of
CPU), on purpose. Prometheus scrapes every 15 s with the same credentials, so checking each scrape
would spend a core-second per ten scrapes for nothing. After a successful check the user's entry
holds an HMAC-SHA256 of the password under a random per-process key (never the password); a
later request with the same credentials is compared against it with ``hmac.compare_digest``
(constant time) and costs no bcrypt round. Failures are not cached: every wrong or unknown
credential costs one bcrypt round (unknown users are checked against a dummy hash of the same
cost, so timing does not tell whether a user exists), and bcrypt rounds run one at a time, so a
flood of bad guesses holds one core, while cached scrapes never wait for it. The cache holds at
most one entry per configured user.

>>> import base64, bcrypt
>>> hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
>>> config = parse_web_config({"basic_auth_users": {"prometheus": hashed}})
>>> config.ssl_context is None, config.basic_auth is not None
(True, True)
>>> def header(user_password: bytes) -> str:
...     return "Basic " + base64.b64encode(user_password).decode()
>>> auth = config.basic_auth
>>> auth.check(header(b"prometheus:s3cret")), auth.check(header(b"prometheus:guess"))
(True, False)
>>> auth.check(None), auth.check("Bearer abc"), auth.check(header(b"mallory:s3cret"))
(False, False, False)
>>> parse_web_config({"basic_auth_users": {"prometheus": "hunter2"}})
Traceback (most recent call last):
...
exporters.web_config.WebConfigError: web config <mapping>: basic_auth_users.prometheus: not a bcrypt hash ($2a$, $2b$ or $2y$, cost 04-31, 60 characters)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

import bcrypt
import yaml

from sketches.errors import EmbmonError

__all__ = [
    "BasicAuth",
    "LiveWebConfig",
    "WebConfig",
    "WebConfigError",
    "load_web_config",
    "parse_web_config",
]

log = logging.getLogger(__name__)

REALM = "embmon"

_TOP = {"tls_server_config", "http_server_config", "basic_auth_users"}
_TLS = {
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "min_version",
    "max_version",
    "prefer_server_cipher_suites",
}
_HTTP = {"http2", "headers"}
_NOT_IMPLEMENTED = {
    "rate_limit",
    "tls_server_config.cert",
    "tls_server_config.key",
    "tls_server_config.client_ca",
    "tls_server_config.client_allowed_sans",
    "tls_server_config.cipher_suites",
    "tls_server_config.curve_preferences",
}
_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_UNVERIFIED_CLIENT_AUTH = {"RequestClientCert", "RequireAnyClientCert"}
# The toolkit's configurable headers, and the values it allows where it restricts them.
_HEADERS: dict[str, frozenset[str] | None] = {
    "Content-Security-Policy": None,
    "X-Frame-Options": frozenset({"deny", "sameorigin"}),
    "X-Content-Type-Options": frozenset({"nosniff"}),
    "X-XSS-Protection": None,
    "Strict-Transport-Security": None,
}
_BCRYPT = re.compile(r"\$2[abxy]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
_MAX_PASSWORD_BYTES = 72  # bcrypt reads no further; longer passwords are refused
_MAX_HEADER_CHARS = 4096


class WebConfigError(EmbmonError, ValueError):
    """The web-config file is unreadable or invalid; the message names the file and the key."""


class BasicAuth:
    """Checks ``Authorization: Basic`` headers against bcrypt hashes (see the module's notes on
    caching and timing). Thread-safe."""

    def __init__(self, users: Mapping[str, bytes]) -> None:
        if not users:
            raise ValueError("BasicAuth needs at least one user")
        self._users = dict(users)
        cost = max(int(hashed[4:6]) for hashed in self._users.values())
        self._dummy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(cost))
        self._key = secrets.token_bytes(32)
        self._verified: dict[str, bytes] = {}
        self._bcrypt = threading.Lock()

    @property
    def users(self) -> tuple[str, ...]:
        return tuple(sorted(self._users))

    def check(self, authorization: str | None) -> bool:
        """True when ``authorization`` (the header's value, or None) holds valid credentials."""
        credentials = _basic_credentials(authorization)
        if credentials is None:
            return False
        user, password = credentials
        digest = hmac.new(self._key, password, hashlib.sha256).digest()
        cached = self._verified.get(user)
        if cached is not None and hmac.compare_digest(cached, digest):
            return True
        hashed = self._users.get(user, self._dummy)
        with self._bcrypt:
            matches = bcrypt.checkpw(password[:_MAX_PASSWORD_BYTES], hashed)
        ok = matches and user in self._users and len(password) <= _MAX_PASSWORD_BYTES
        if ok:
            self._verified[user] = digest
        return ok


@dataclass(frozen=True)
class WebConfig:
    """A loaded web config: the server's TLS context (None: plain HTTP), basic auth (None:
    open) and extra response headers."""

    source: str
    ssl_context: ssl.SSLContext | None = None
    basic_auth: BasicAuth | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    client_auth_type: str = "NoClientCert"
    files: tuple[Path, ...] = ()
    """The web-config file and the files it names: a change to one reloads the config."""


def load_web_config(path: str | Path) -> WebConfig:
    """Reads, validates and prepares the web-config file at ``path`` (relative file names in it
    are relative to its directory). Raises :class:`WebConfigError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise WebConfigError(f"cannot read web config {path}: {reason}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise WebConfigError(f"web config {path} is not valid YAML: {_where(exc)}") from None
    config = parse_web_config(document, source=str(path), base_dir=path.parent)
    return replace(config, files=(path, *config.files))


class LiveWebConfig:
    """The web config of ``path``, read again when it or a file it names changes (a renewed
    certificate, a new user), as the exporter toolkit does; looked at most every ``every_s``.

    A change that does not load (a half-written file, a key that does not match its
    certificate yet) is logged and the last good config stays; so does one that would switch
    between HTTP and HTTPS, which needs a restart (clients and probes would break).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        every_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = Path(path)
        self._config = load_web_config(self._path)
        self._stamps = _stamps(self._config.files)
        self._every, self._clock = every_s, clock
        self._checked = clock()
        self._lock = threading.Lock()

    @property
    def current(self) -> WebConfig:
        with self._lock:
            if self._clock() - self._checked >= self._every:
                self._checked = self._clock()
                self._reload_if_changed()
            return self._config

    def _reload_if_changed(self) -> None:
        stamps = _stamps(self._config.files)
        if stamps == self._stamps:
            return
        self._stamps = stamps
        try:
            config = load_web_config(self._path)
        except WebConfigError as exc:
            log.warning("web config changed but does not load, keeping the last good one: %s", exc)
            return
        if (config.ssl_context is None) != (self._config.ssl_context is None):
            log.warning("web config %s switches HTTP/HTTPS: restart to apply it", self._path)
            return
        self._config, self._stamps = config, _stamps(config.files)
        log.info("web config %s reloaded", self._path)


def _stamps(files: Sequence[Path]) -> tuple[tuple[int, int] | None, ...]:
    """(mtime in ns, size) of each file, None for one that cannot be read now."""
    out: list[tuple[int, int] | None] = []
    for path in files:
        try:
            st = path.stat()
        except OSError:
            out.append(None)
        else:
            out.append((st.st_mtime_ns, st.st_size))
    return tuple(out)


def parse_web_config(
    document: Any, *, source: str = "<mapping>", base_dir: Path = Path(".")
) -> WebConfig:
    """Validates an already parsed web-config document (``None`` is an empty file)."""
    p = _Parser(source, base_dir)
    top = p.mapping(document, "", _TOP)
    context, client_auth = None, "NoClientCert"
    if "tls_server_config" in top:
        context, client_auth = p.tls(top["tls_server_config"])
    headers = p.http(top.get("http_server_config"))
    auth = p.users(top.get("basic_auth_users"))
    return WebConfig(source, context, auth, headers, client_auth, tuple(p.files))


class _Parser:
    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir
        self.files: list[Path] = []

    def fail(self, key: str, problem: str) -> NoReturn:
        where = f"{key}: " if key else ""
        raise WebConfigError(f"web config {self.source}: {where}{problem}")

    def mapping(self, value: Any, key: str, known: set[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(key, "expected a mapping")
        prefix = f"{key}." if key else ""
        for name in value:
            full = f"{prefix}{name}"
            if full in _NOT_IMPLEMENTED:
                self.fail(full, "part of the exporter-toolkit format, not supported by embmon")
            if name not in known:
                self.fail(full, f"unknown key (known here: {', '.join(sorted(known))})")
        return value

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value:
            self.fail(key, "expected a non-empty string")
        return value

    def choice(self, value: Any, key: str, choices: Mapping[str, Any]) -> str:
        text = self.string(value, key)
        if text not in choices:
            self.fail(key, f"expected one of {', '.join(choices)}")
        return text

    def file(self, value: Any, key: str) -> Path:
        path = self.base_dir / self.string(value, key)
        if not path.is_file():
            self.fail(key, f"no such file {path}")
        self.files.append(path)
        return path

    def tls(self, value: Any) -> tuple[ssl.SSLContext, str]:
        key = "tls_server_config"
        tls = self.mapping(value, key, _TLS)
        for required in ("cert_file", "key_file"):
            if required not in tls:
                self.fail(f"{key}.{required}", "required to serve TLS")
        cert = self.file(tls["cert_file"], f"{key}.cert_file")
        private = self.file(tls["key_file"], f"{key}.key_file")
        auth_type = tls.get("client_auth_type", "NoClientCert")
        if auth_type in _UNVERIFIED_CLIENT_AUTH:
            self.fail(
                f"{key}.client_auth_type",
                f"{auth_type} accepts unverified client certificates and is not supported; "
                "use RequireAndVerifyClientCert (or VerifyClientCertIfGiven)",
            )
        auth_type = self.choice(auth_type, f"{key}.client_auth_type", _CLIENT_AUTH)
        low = self.choice(tls.get("min_version", "TLS12"), f"{key}.min_version", _VERSIONS)
        high = self.choice(tls.get("max_version", "TLS13"), f"{key}.max_version", _VERSIONS)
        if _VERSIONS[low] > _VERSIONS[high]:
            self.fail(f"{key}.min_version", "is above max_version")
        prefer = tls.get("prefer_server_cipher_suites", True)
        if not isinstance(prefer, bool):
            self.fail(f"{key}.prefer_server_cipher_suites", "expected true or false")

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = _VERSIONS[low]
        context.maximum_version = _VERSIONS[high]
        if prefer:
            context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        else:
            context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
        context.set_alpn_protocols(["http/1.1"])
        try:
            context.load_cert_chain(cert, private, password=_no_passphrase)
        except _EncryptedKey:
            self.fail(f"{key}.key_file", "the key is encrypted; embmon needs an unencrypted key")
        except ssl.SSLError as exc:
            self.fail(
                f"{key}.cert_file/key_file",
                f"cannot load the certificate and key (PEM, and the key must match the "
                f"certificate): {exc.reason or exc.__class__.__name__}",
            )
        ca = tls.get("client_ca_file")
        if auth_type == "NoClientCert":
            if ca is not None:
                self.fail(
                    f"{key}.client_ca_file",
                    "set without a client_auth_type that verifies client certificates",
                )
        else:
            if ca is None:
                self.fail(f"{key}.client_ca_file", f"required by client_auth_type {auth_type}")
            ca_path = self.file(ca, f"{key}.client_ca_file")
            try:
                context.load_verify_locations(cafile=ca_path)
            except ssl.SSLError as exc:
                self.fail(
                    f"{key}.client_ca_file",
                    f"cannot load CA certificates (PEM): {exc.reason or exc.__class__.__name__}",
                )
            context.verify_mode = _CLIENT_AUTH[auth_type]
        return context, auth_type

    def http(self, value: Any) -> dict[str, str]:
        key = "http_server_config"
        http = self.mapping(value, key, _HTTP)
        if not isinstance(http.get("http2", True), bool):
            self.fail(f"{key}.http2", "expected true or false")
        headers = self.mapping(http.get("headers"), f"{key}.headers", set(_HEADERS))
        out: dict[str, str] = {}
        for name, raw in headers.items():
            text = self.string(raw, f"{key}.headers.{name}")
            if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
                self.fail(f"{key}.headers.{name}", "control characters are not allowed")
            allowed = _HEADERS[name]
            if allowed is not None and text.lower() not in allowed:
                self.fail(f"{key}.headers.{name}", f"expected one of {', '.join(sorted(allowed))}")
            out[name] = text
        return out

    def users(self, value: Any) -> BasicAuth | None:
        key = "basic_auth_users"
        if value is None:
            return None
        if not isinstance(value, dict):
            self.fail(key, "expected a mapping of user names to bcrypt hashes")
        users: dict[str, bytes] = {}
        for name, hashed in value.items():
            if not isinstance(name, str) or not name:
                self.fail(key, "user names must be non-empty strings (quote them)")
            if ":" in name or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
                self.fail(f"{key}.{name!r}", "a user name cannot hold ':' or control characters")
            if not isinstance(hashed, str) or not _BCRYPT.fullmatch(hashed):
                self.fail(
                    f"{key}.{name}",
                    "not a bcrypt hash ($2a$, $2b$ or $2y$, cost 04-31, 60 characters)",
                )
            users[name] = hashed.encode("ascii")
        return BasicAuth(users) if users else None


class _EncryptedKey(Exception):
    """The key file asked for a password (OpenSSL would otherwise prompt on the terminal)."""


def _no_passphrase() -> NoReturn:
    # Without a callback OpenSSL would prompt on the terminal, and a daemon would hang.
    raise _EncryptedKey


def _basic_credentials(authorization: str | None) -> tuple[str, bytes] | None:
    """(user, password) of a ``Basic`` authorization header, or None if it is not one."""
    if authorization is None or len(authorization) > _MAX_HEADER_CHARS:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(token.strip(), validate=True)
        user, sep, password = raw.partition(b":")
        if not sep:
            return None
        return user.decode("utf-8"), password
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        return None


def _where(exc: yaml.YAMLError) -> str:
    """Line, column and problem of a YAML error, never the text of the line."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or "syntax error"
    if mark is None:
        return str(problem)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
