"""Agent settings: a YAML file, overridden by ``EMBMON_*`` variables, overridden by flags.

Every key of :class:`Settings` is a file key (``bootstrap_servers``), a variable
(``EMBMON_BOOTSTRAP_SERVERS``) and a flag (``--bootstrap-servers``), so a Helm value maps to one
variable one to one. Lists are comma-separated in variables; ``fields`` is ``NAME=PATH`` pairs
(``--field embedding=payload.vector``, ``EMBMON_FIELDS="embedding=payload.vector,model=svc"``).

>>> s = load_settings(env={"EMBMON_TOPICS": "a,b", "EMBMON_WINDOW": "1d"}, flags={"window": "1h"})
>>> s.topics, s.window
(('a', 'b'), '1h')
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union, get_args, get_origin, get_type_hints

from sketches.errors import EmbmonError

if TYPE_CHECKING:
    import yaml

__all__ = ["ConfigError", "Settings", "add_settings_flags", "load_settings"]


class ConfigError(EmbmonError, ValueError):
    """The configuration (file, variables or flags) is invalid."""


@dataclass(frozen=True)
class Settings:
    """What ``embmon run`` needs; defaults suit a local broker and an hourly window."""

    bootstrap_servers: str = field(
        default="localhost:9092",
        metadata={"help": "Kafka bootstrap servers, host:port[,host:port]"},
    )
    topics: tuple[str, ...] = field(
        default=(), metadata={"help": "topics to consume (flag repeatable as --topic)"}
    )
    group_id: str = field(
        default="embmon", metadata={"help": "consumer group id; replicas share it"}
    )
    client_id: str = field(default="embmon", metadata={"help": "Kafka client id"})
    security_protocol: str = field(
        default="PLAINTEXT", metadata={"help": "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"}
    )
    sasl_mechanism: str | None = field(
        default=None, metadata={"help": "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER"}
    )
    sasl_plain_username: str | None = field(default=None, metadata={"help": "SASL username"})
    sasl_plain_password: str | None = field(
        default=None, metadata={"help": "SASL password (prefer sasl_plain_password_file)"}
    )
    sasl_plain_password_file: str | None = field(
        default=None,
        metadata={"help": "file holding the SASL password (a mounted Secret); wins over the value"},
    )
    ssl_cafile: str | None = field(default=None, metadata={"help": "CA bundle for SSL"})
    ssl_certfile: str | None = field(default=None, metadata={"help": "client certificate for SSL"})
    ssl_keyfile: str | None = field(default=None, metadata={"help": "client key for SSL"})
    ssl_check_hostname: bool = field(
        default=True, metadata={"help": "verify that the broker certificate names its host"}
    )
    fetch_max_bytes: int = field(default=52_428_800, metadata={"help": "max bytes per fetch"})
    max_partition_fetch_bytes: int = field(
        default=1_048_576, metadata={"help": "max bytes per partition per fetch"}
    )
    max_poll_records: int = field(
        default=2000, metadata={"help": "records per poll (bounds memory per batch)"}
    )
    session_timeout_ms: int = field(
        default=10_000, metadata={"help": "consumer group session timeout"}
    )
    heartbeat_interval_ms: int = field(
        default=3000, metadata={"help": "consumer group heartbeat interval"}
    )
    max_poll_interval_ms: int = field(
        default=300_000, metadata={"help": "max time between polls before leaving the group"}
    )
    reference: str = field(
        default="", metadata={"help": "reference directory (embmon reference build --out)"}
    )
    window: str = field(default="1h", metadata={"help": "tumbling window size, e.g. 5m, 1h, 1d"})
    lateness: str = field(
        default="0s", metadata={"help": "allowed lateness before a window closes"}
    )
    time_mode: str = field(
        default="event",
        metadata={"help": "event (timestamps of events) or processing (arrival time)"},
    )
    metrics_host: str = field(
        default="0.0.0.0", metadata={"help": "address of the /metrics endpoint"}
    )
    metrics_port: int = field(
        default=9808, metadata={"help": "port of /metrics, /healthz, /readyz (0: none)"}
    )
    metrics_web_config: str | None = field(
        default=None,
        metadata={
            "help": "web-config YAML for the endpoint: TLS and basic auth, as in Prometheus' "
            "exporter toolkit"
        },
    )
    out: str = field(
        default="embmon-out", metadata={"help": "directory for windows.jsonl and closed profiles"}
    )
    until_end: bool = field(
        default=False,
        metadata={"help": "consume up to the end offsets seen at start, close all windows, exit"},
    )
    max_event_bytes: int = field(
        default=1_048_576, metadata={"help": "records larger than this are rejected as oversized"}
    )
    fields: tuple[tuple[str, str], ...] = field(
        default=(), metadata={"help": "event field mapping NAME=PATH (flag repeatable as --field)"}
    )
    segment_keys: tuple[str, ...] = field(
        default=(), metadata={"help": "segment keys kept from events' segment object"}
    )
    default_model: str = field(
        default="default", metadata={"help": "model name for events without one"}
    )
    max_models: int = field(
        default=50, metadata={"help": "distinct model label values before folding into 'other'"}
    )
    max_segments: int = field(
        default=50, metadata={"help": "distinct segment label values per model before folding"}
    )
    max_terms: int = field(default=10, metadata={"help": "frequent terms exported per window"})
    term_labels: bool = field(
        default=True,
        metadata={"help": "export frequent terms as label values (off: no event text leaves)"},
    )
    max_open_windows: int = field(
        default=5000,
        metadata={"help": "open windows held at once; events needing one more are rejected"},
    )
    max_future: str = field(
        default="1h",
        metadata={"help": "events timestamped further ahead of the clock are rejected (0s: off)"},
    )
    series_expiry_windows: int = field(
        default=24,
        metadata={
            "help": "stop exporting a (model, segment) this many windows behind the newest "
            "closed window (0: never)"
        },
    )
    watermark_lead_windows: int = field(
        default=3, metadata={"help": "pause a partition this many windows ahead of the others"}
    )
    dead_letter_topic: str | None = field(
        default=None, metadata={"help": "topic that receives rejected records (optional)"}
    )
    dead_letter_rate: float = field(
        default=100.0,
        metadata={"help": "dead letters sent per second at most; the rest are counted, not sent"},
    )
    join_timeout: str = field(
        default="60s",
        metadata={"help": "leave and rejoin the group if a join has not completed after this"},
    )
    log_level: str = field(default="INFO", metadata={"help": "DEBUG, INFO, WARNING or ERROR"})
    role: str = field(
        default="all",
        metadata={
            "help": "all (one process), collector (events in, partial profiles out) or "
            "evaluator (partial profiles in, windows and metrics out)"
        },
    )
    profiles_topic: str | None = field(
        default=None,
        metadata={"help": "topic of partial profiles between collectors and evaluators"},
    )
    grace: str = field(
        default="2m",
        metadata={
            "help": "evaluator: a window still not complete this long after some input "
            "partition passed it is emitted partial (complete false)"
        },
    )

    def kafka_security(self) -> dict[str, Any]:
        """The security keyword arguments for kafka-python (only those set).

        The SASL password comes from ``sasl_plain_password_file`` when that is set (read
        here, at connect time, so a rotated Secret is picked up by the next connection).
        """
        keys = (
            "security_protocol",
            "sasl_mechanism",
            "sasl_plain_username",
            "sasl_plain_password",
            "ssl_cafile",
            "ssl_certfile",
            "ssl_keyfile",
            "ssl_check_hostname",
        )
        found = {k: getattr(self, k) for k in keys if getattr(self, k) is not None}
        if self.sasl_plain_password_file:
            found["sasl_plain_password"] = read_secret(self.sasl_plain_password_file)
        return found

    def __repr__(self) -> str:  # never print a secret
        shown = {
            f.name: "***" if f.name in _SECRETS and getattr(self, f.name) else getattr(self, f.name)
            for f in dataclasses.fields(self)
        }
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


_SECRETS = frozenset({"sasl_plain_password"})


def read_secret(path: str | Path) -> str:
    """The contents of a secret file, without its trailing newline; the error names the file only."""
    try:
        return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read secret file {path}: {reason}") from None


_HINTS = get_type_hints(Settings)
_FLAG_NAMES = {"topics": "topic", "fields": "field"}


def env_name(key: str) -> str:
    return "EMBMON_" + key.upper()


def _base_type(key: str) -> Any:
    hint = _HINTS[key]
    if get_origin(hint) in (Union, types.UnionType):
        hint = next(a for a in get_args(hint) if a is not type(None))
    return hint


def _convert(key: str, value: Any, source: str) -> Any:
    """Coerce a file/env/flag value to the key's type, or say clearly what is wrong."""
    base = _base_type(key)
    try:
        if value is None:
            return None
        if base is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if base is int:
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if key == "fields":
            pairs = value.items() if isinstance(value, Mapping) else _split_pairs(value)
            return tuple((str(k), str(v)) for k, v in pairs)
        if get_origin(base) is tuple:
            items = [value] if isinstance(value, str) else list(value)
            parts = (part.strip() for item in items for part in str(item).split(","))
            return tuple(part for part in parts if part)
        return str(value)
    except (TypeError, ValueError) as exc:
        shown = "(hidden)" if key in _SECRETS else repr(value)
        raise ConfigError(f"{source}: invalid value {shown} for {key}") from exc


def _where(exc: yaml.YAMLError) -> str:
    """Line and column of a YAML error, and what was wrong, never the text of the line
    (it may hold a password)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or "syntax error"
    if mark is None:
        return str(problem)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"


def _split_pairs(value: Any) -> list[tuple[str, str]]:
    items = value.split(",") if isinstance(value, str) else list(value)
    pairs = []
    for item in items:
        name, sep, path = str(item).partition("=")
        if not sep:
            raise ValueError(f"{item!r} is not NAME=PATH")
        pairs.append((name.strip(), path.strip()))
    return pairs


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; each help names the variable it overrides."""
    parser.add_argument("--config", help="YAML settings file (env EMBMON_CONFIG)")
    for f in dataclasses.fields(Settings):
        flag = "--" + _FLAG_NAMES.get(f.name, f.name).replace("_", "-")
        text = f"{f.metadata['help']} (env {env_name(f.name)})"
        if _base_type(f.name) is bool:
            parser.add_argument(
                flag, dest=f.name, action="store_const", const=True, default=None, help=text
            )
        elif f.name in _FLAG_NAMES or get_origin(_base_type(f.name)) is tuple:
            parser.add_argument(flag, dest=f.name, action="append", default=None, help=text)
        else:
            parser.add_argument(flag, dest=f.name, default=None, help=text)


def load_settings(
    config_file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Settings:
    """Defaults, then the file, then ``EMBMON_*`` variables, then flags (``None`` = unset)."""
    environ = os.environ if env is None else env
    path = config_file or environ.get("EMBMON_CONFIG")
    values: dict[str, Any] = {}
    known = {f.name for f in dataclasses.fields(Settings)}
    if path:
        import yaml  # here: only a config file needs it (~20 ms of every start-up otherwise)

        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {_where(exc)}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of settings at the top level")
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}")
        values.update({k: _convert(k, v, str(path)) for k, v in loaded.items()})
    for key in known:
        if env_name(key) in environ:
            values[key] = _convert(key, environ[env_name(key)], env_name(key))
    for key, value in (flags or {}).items():
        if key in known and value is not None:
            values[key] = _convert(key, value, "--" + _FLAG_NAMES.get(key, key).replace("_", "-"))
    settings = Settings(**values)
    if settings.time_mode not in ("event", "processing"):
        raise ConfigError(f"time_mode must be event or processing, got {settings.time_mode!r}")
    if settings.role not in ("all", "collector", "evaluator"):
        raise ConfigError(f"role must be all, collector or evaluator, got {settings.role!r}")
    if settings.role != "all" and not settings.profiles_topic:
        raise ConfigError(f"role {settings.role} needs profiles_topic (--profiles-topic)")
    if settings.role != "all" and settings.time_mode != "event":
        raise ConfigError(
            "roles collector and evaluator need time_mode event: windows by arrival time "
            "cannot be cut the same by whoever reads a partition"
        )
    return settings
