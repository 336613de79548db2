"""Tell a refused TLS handshake from a broker that is down, so a wrong certificate fails fast.

kafka-python reports both the same way, a bootstrap that timed out, and retries for ever; but a
CA that did not sign the broker, a certificate for another host or a client certificate the
broker refuses will not heal with time. After a failed connect over SSL, :func:`tls_refusal`
makes one handshake of its own with the first bootstrap server, with the same CA, client
certificate and host name check, and says why it was refused, if it was.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Sequence

from sketches.errors import EmbmonError

__all__ = ["KafkaTlsError", "tls_refusal"]

_CONNECT_TIMEOUT_S = 5.0
_ALERT_WAIT_S = 2.0


class KafkaTlsError(EmbmonError):
    """The broker and this agent do not agree on TLS: a setting is wrong, retrying cannot help."""


def tls_refusal(
    servers: str | Sequence[str],
    *,
    cafile: str | None,
    certfile: str | None,
    keyfile: str | None,
    check_hostname: bool = True,
) -> str | None:
    """Why a TLS handshake with the first of ``servers`` (``host:port``) is refused; None when
    it succeeds or the server cannot be reached at all (that may pass: the caller retries).

    With TLS 1.3 a refused client certificate shows only after the handshake, as an alert on
    the first read: the probe waits ``_ALERT_WAIT_S`` for one (a broker sends nothing first).
    """
    first = (servers.split(",") if isinstance(servers, str) else list(servers))[0].strip()
    host, _, port = first.rpartition(":")
    host = host.strip("[]")
    context = ssl.create_default_context(cafile=cafile)
    context.check_hostname = check_hostname
    if not check_hostname:
        context.verify_mode = ssl.CERT_REQUIRED
    if certfile:
        context.load_cert_chain(certfile, keyfile)
    try:
        with (
            socket.create_connection((host, int(port)), timeout=_CONNECT_TIMEOUT_S) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            tls.settimeout(_ALERT_WAIT_S)
            try:
                tls.recv(1)  # an end of stream is no refusal: a TLS proxy whose broker is down
            except TimeoutError:
                return None
    except ssl.SSLError as exc:
        return str(exc)
    except OSError:
        return None
    return None
