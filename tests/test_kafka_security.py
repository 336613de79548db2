"""``embmon run`` against secured brokers, for real: TLS through stunnel4, SASL on Tansu.

TLS: each broker is Tansu behind its own stunnel4 (Tansu advertises the TLS port, so no byte goes
in the clear), with certificates made for this module by ``openssl``. SASL: Tansu 0.6.0 with
``--authentication``. Tansu 0.6.0 cannot take a SCRAM user (see ``tests/secure_broker.py``) nor
offers PLAIN, so no SASL login can succeed here: the SASL tests cover the refusal path (the agent
consumes nothing, stays unready, says why without a traceback and never prints the password,
even at DEBUG) and how the password reaches the client. A failing agent is not expected to exit:
it keeps retrying, so each refusal test waits for the log line that names the failure, checks,
and kills it.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from sketches.batch import EventBatch
from sketches.reference import build_reference
from tests.agent_scenarios import (
    AgentProcess,
    Event,
    _digits,
    digits_events,
    expected_counts,
    wait_for,
    window_counts,
)
from tests.secure_broker import Pki, TansuProcess, TlsBroker, create_topic, make_pki, produce

pytestmark = pytest.mark.kafka

PARTITIONS = 2
PASSWORD = "s3cret-Pa55word-e7f1c0"
"""Distinctive, so any appearance in a log is a leak and not a coincidence."""
REFUSAL_TIMEOUT_S = 20.0


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small digits reference (20 rounds): these tests count events, not drift."""
    d = _digits()
    batch = EventBatch(embeddings=d.train, timestamps=np.zeros(len(d.train)))
    out = tmp_path_factory.mktemp("security-reference")
    build_reference(batch, d.train_labels, rounds=20, sizes=(10, 100), seed=0).save(out)
    return out


@pytest.fixture(scope="module")
def events() -> list[Event]:
    return digits_events(windows=2, per_window=40)


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[TlsBroker]:
    """Server verification only: stunnel asks no client certificate."""
    with TlsBroker(tmp_path_factory.mktemp("tls"), pki, name="tls") as broker:
        yield broker


@pytest.fixture(scope="module")
def mtls_broker(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[TlsBroker]:
    """Client certificate required (stunnel ``verify = 2``, ``CAfile`` = the test CA)."""
    with TlsBroker(tmp_path_factory.mktemp("mtls"), pki, name="mtls", client_auth=True) as b:
        yield b


@pytest.fixture(scope="module")
def wrong_host_broker(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[TlsBroker]:
    """A certificate from the trusted CA that names another host than 127.0.0.1."""
    with TlsBroker(tmp_path_factory.mktemp("host"), pki, name="host", wrong_host=True) as b:
        yield b


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuProcess]:
    with TansuProcess(tmp_path_factory.mktemp("sasl"), authentication=True) as broker:
        yield broker


# --- helpers --------------------------------------------------------------------------------


def _filled_topic(broker: TlsBroker, events: Sequence[Event]) -> str:
    """A fresh topic on ``broker`` holding ``events``, written through TLS."""
    topic = f"sec-{uuid.uuid4().hex[:12]}"
    create_topic(broker.bootstrap_servers, topic, PARTITIONS, broker.client_config)
    produce(
        broker.bootstrap_servers, topic, [e.value for e in events], PARTITIONS, broker.client_config
    )
    return topic


def _agent(
    bootstrap: str,
    topic: str,
    reference: Path,
    out: Path,
    extra: Sequence[str],
    *,
    until_end: bool = False,
) -> AgentProcess:
    """``embmon run`` in a group of its own (``--until-end`` for the runs that must finish)."""
    return AgentProcess(
        bootstrap=bootstrap,
        topic=topic,
        group=f"g-{uuid.uuid4().hex[:8]}",
        reference=reference,
        out=out,
        extra=extra,
        until_end=until_end,
    )


def _ssl_flags(
    pki: Pki, *, ca: Path | None = None, client: tuple[Path, Path] | None = None
) -> list[str]:
    """``embmon run`` flags for SSL: the CA file (the test CA unless ``ca``), a client pair."""
    flags = ["--security-protocol", "SSL", "--ssl-cafile", str(ca or pki.ca)]
    if client is not None:
        flags += ["--ssl-certfile", str(client[0]), "--ssl-keyfile", str(client[1])]
    return flags


def _consumes_all(agent: AgentProcess, events: Sequence[Event]) -> None:
    """``--until-end`` run: exits 0 having counted exactly the produced events per window."""
    code = agent.wait_exit(timeout_s=60)
    assert code == 0, agent.log_tail()
    assert window_counts(agent.out) == expected_counts(events), agent.log_tail()


def _wait_log(agent: AgentProcess, pattern: str, what: str) -> str:
    """Wait until the agent's log matches ``pattern`` (it may also have exited by then)."""
    regex = re.compile(pattern)

    def seen() -> str | None:
        match = regex.search(agent.log_text())
        if match:
            return match.group(0)
        if agent.returncode is not None:
            pytest.fail(f"{agent.name} exited {agent.returncode} before {what}\n{agent.log_tail()}")
        return None

    return wait_for(seen, what, timeout_s=REFUSAL_TIMEOUT_S)


def _assert_consumed_nothing(agent: AgentProcess) -> None:
    """Not ready, no event counted, no window written; still running or exited non-zero."""
    if agent.returncode is None:
        status, _ = agent.get("/readyz")
        assert status == 503, agent.log_tail()
        metrics = agent.metrics()
        assert not any(v for _, v in metrics.samples.get("embmon_events_total", [])), (
            metrics.samples.get("embmon_events_total")
        )
    else:
        assert agent.returncode != 0
    assert not window_counts(agent.out)


def _exits_on_tls_refusal(agent: AgentProcess, pattern: str) -> None:
    """A refused TLS handshake is fatal: exit 2 with one ``embmon: error:`` line naming why."""
    assert agent.wait_exit(timeout_s=REFUSAL_TIMEOUT_S) == 2, agent.log_tail()
    errors = [line for line in agent.log_text().splitlines() if line.startswith("embmon: error:")]
    assert len(errors) == 1 and "TLS with Kafka at" in errors[0], agent.log_tail()
    assert re.search(pattern, errors[0]), errors[0]


def _assert_no_traceback(agent: AgentProcess) -> None:
    assert "Traceback" not in agent.log_text(), agent.log_text()[-3000:]


# --- TLS ------------------------------------------------------------------------------------


def test_tls_with_ca_file_consumes_every_event(
    tls_broker: TlsBroker, pki: Pki, reference: Path, events: list[Event], tmp_path: Path
) -> None:
    """security_protocol=SSL with ssl_cafile: the whole run (bootstrap, group, fetches, commits)
    goes through stunnel, and the windows count exactly what was produced."""
    topic = _filled_topic(tls_broker, events)
    offset = tls_broker.tls_log_offset()
    with _agent(
        tls_broker.bootstrap_servers, topic, reference, tmp_path / "out", _ssl_flags(pki),
        until_end=True,
    ) as agent:  # fmt: skip
        _consumes_all(agent, events)
        _assert_no_traceback(agent)
    assert "TLS accepted" in tls_broker.tls_log_since(offset)


def test_tls_with_a_ca_that_did_not_sign_the_broker_is_refused(
    tls_broker: TlsBroker, pki: Pki, reference: Path, events: list[Event], tmp_path: Path
) -> None:
    """An ssl_cafile that does not vouch for the broker: nothing is consumed, the log says
    CERTIFICATE_VERIFY_FAILED, and the broker side saw the client reject its certificate."""
    topic = _filled_topic(tls_broker, events)
    offset = tls_broker.tls_log_offset()
    flags = _ssl_flags(pki, ca=pki.rogue_ca)
    with _agent(tls_broker.bootstrap_servers, topic, reference, tmp_path / "out", flags) as agent:
        _exits_on_tls_refusal(agent, r"CERTIFICATE_VERIFY_FAILED")
        _assert_consumed_nothing(agent)
        _assert_no_traceback(agent)
    assert "unknown ca" in tls_broker.tls_log_since(offset)


def test_client_certificate_is_accepted_when_given(
    mtls_broker: TlsBroker, pki: Pki, reference: Path, events: list[Event], tmp_path: Path
) -> None:
    """ssl_certfile/ssl_keyfile signed by the CA stunnel trusts: consumes every event."""
    topic = _filled_topic(mtls_broker, events)
    offset = mtls_broker.tls_log_offset()
    flags = _ssl_flags(pki, client=(pki.client_cert, pki.client_key))
    with _agent(
        mtls_broker.bootstrap_servers, topic, reference, tmp_path / "out", flags, until_end=True
    ) as agent:
        _consumes_all(agent, events)
    log = mtls_broker.tls_log_since(offset)
    assert "Certificate accepted" in log and "embmon test client" in log, log[-2000:]


@pytest.mark.parametrize("client", ["none", "rogue"])
def test_client_certificate_is_required(
    client: str,
    mtls_broker: TlsBroker,
    pki: Pki,
    reference: Path,
    events: list[Event],
    tmp_path: Path,
) -> None:
    """Without a client certificate, or with one from another CA, stunnel refuses the handshake
    and the agent consumes nothing."""
    topic = _filled_topic(mtls_broker, events)
    offset = mtls_broker.tls_log_offset()
    if client == "none":
        flags, server_says = _ssl_flags(pki), "peer did not return a certificate"
        agent_says = "CERTIFICATE_REQUIRED"
    else:
        flags = _ssl_flags(pki, client=(pki.rogue_client_cert, pki.rogue_client_key))
        server_says, agent_says = "certificate verify failed", "UNKNOWN_CA"
    with _agent(mtls_broker.bootstrap_servers, topic, reference, tmp_path / "out", flags) as agent:
        _exits_on_tls_refusal(agent, agent_says)
        wait_for(
            lambda: server_says in mtls_broker.tls_log_since(offset),
            f"stunnel to log {server_says!r}",
            timeout_s=REFUSAL_TIMEOUT_S,
        )
        _assert_consumed_nothing(agent)


def test_broker_certificate_for_another_host_is_refused_by_default(
    wrong_host_broker: TlsBroker, pki: Pki, reference: Path, events: list[Event], tmp_path: Path
) -> None:
    """ssl_check_hostname defaults to on: a trusted certificate naming another host fails."""
    topic = _filled_topic(wrong_host_broker, events)
    with _agent(
        wrong_host_broker.bootstrap_servers, topic, reference, tmp_path / "out", _ssl_flags(pki)
    ) as agent:
        _exits_on_tls_refusal(agent, r"IP address mismatch")
        _assert_consumed_nothing(agent)
        _assert_no_traceback(agent)


def test_ssl_check_hostname_off_accepts_a_certificate_for_another_host(
    wrong_host_broker: TlsBroker, pki: Pki, reference: Path, events: list[Event], tmp_path: Path
) -> None:
    """``ssl_check_hostname: false`` (a YAML setting; the flag can only turn it on) still
    verifies the chain but not the name: the agent consumes everything."""
    topic = _filled_topic(wrong_host_broker, events)
    config = tmp_path / "embmon.yaml"
    config.write_text("ssl_check_hostname: false\n")
    flags = ["--config", str(config), *_ssl_flags(pki)]
    with _agent(
        wrong_host_broker.bootstrap_servers, topic, reference, tmp_path / "out", flags,
        until_end=True,
    ) as agent:  # fmt: skip
        wait_for(
            lambda: agent.returncode is not None or "IP address mismatch" in agent.log_text(),
            "the run to end or the host check to fail",
            timeout_s=60,
        )
        assert "IP address mismatch" not in agent.log_text()
        _consumes_all(agent, events)


# --- SASL -----------------------------------------------------------------------------------


def _sasl_flags(mechanism: str, *password: str) -> list[str]:
    return [
        "--security-protocol", "SASL_PLAINTEXT", "--sasl-mechanism", mechanism,
        "--sasl-plain-username", "embmon", *password, "--log-level", "DEBUG",
    ]  # fmt: skip


def _assert_password_not_logged(agent: AgentProcess) -> None:
    text = agent.log_text()
    assert PASSWORD not in text, "the SASL password appears in the agent's log"


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_scram_login_refused_consumes_nothing_and_never_logs_the_password(
    mechanism: str, sasl_broker: TansuProcess, reference: Path, tmp_path: Path
) -> None:
    """The broker refuses the login (Tansu 0.6 keeps no SCRAM user, so every password is wrong):
    the agent runs the SCRAM exchange, consumes nothing, prints no traceback, and the password
    given on the command line appears nowhere in its output at DEBUG level."""
    flags = _sasl_flags(mechanism, "--sasl-plain-password", PASSWORD)
    with _agent(sasl_broker.bootstrap_servers, "t", reference, tmp_path / "out", flags) as agent:
        _wait_log(agent, r"kafka\.net\.sasl\.scram", "the SCRAM exchange")
        _wait_log(agent, r"Bootstrap connection to \S+ failed", "the refused login")
        _assert_consumed_nothing(agent)
        _assert_no_traceback(agent)
        _assert_password_not_logged(agent)


def test_plain_mechanism_refused_consumes_nothing_and_never_logs_the_password(
    sasl_broker: TansuProcess, reference: Path, tmp_path: Path
) -> None:
    """Tansu 0.6 does not offer PLAIN and drops the connection at the handshake: the agent
    consumes nothing and the password (sent in the clear by PLAIN) is not in its log."""
    flags = _sasl_flags("PLAIN", "--sasl-plain-password", PASSWORD)
    with _agent(sasl_broker.bootstrap_servers, "t", reference, tmp_path / "out", flags) as agent:
        _wait_log(agent, r"Bootstrap connection to \S+ failed", "the refused handshake")
        _assert_consumed_nothing(agent)
        _assert_no_traceback(agent)
        _assert_password_not_logged(agent)


def test_password_file_reaches_the_scram_exchange(
    sasl_broker: TansuProcess, reference: Path, tmp_path: Path
) -> None:
    """With only ``sasl_plain_password_file`` set, the consumer gets the file's password: its
    SCRAM exchange fails for the broker's reason (unknown user), not for a missing password;
    and the password from the file is not logged either."""
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    flags = _sasl_flags("SCRAM-SHA-256", "--sasl-plain-password-file", str(secret))
    with _agent(sasl_broker.bootstrap_servers, "t", reference, tmp_path / "out", flags) as agent:
        _wait_log(agent, r"Connection lost: .*", "the end of a SCRAM exchange")
        _assert_password_not_logged(agent)
        assert "'NoneType' object has no attribute 'encode'" not in agent.log_text()
