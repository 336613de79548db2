"""Settings: file < EMBMON_* variables < flags, the documented example, clear errors."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import ConfigError, Settings, env_name, load_settings

EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "config" / "embmon.yaml"


def test_example_file_loads_and_documents_every_setting() -> None:
    settings = load_settings(EXAMPLE, env={})
    assert settings.topics == ("inference-events",)
    text = EXAMPLE.read_text()
    missing = [f.name for f in dataclasses.fields(Settings) if f"{f.name}:" not in text]
    assert not missing, f"settings not documented in {EXAMPLE.name}: {missing}"


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "embmon.yaml"
    config.write_text("window: 1d\nmetrics_port: 1000\ntopics: [a]\nuntil_end: false\n")
    env = {
        "EMBMON_METRICS_PORT": "2000",
        "EMBMON_UNTIL_END": "yes",
        "EMBMON_SEGMENT_KEYS": "region, tier",
    }
    settings = load_settings(
        config, env=env, flags={"metrics_port": "3000", "topics": ["x", "y,z"]}
    )
    assert settings.window == "1d"
    assert settings.metrics_port == 3000
    assert settings.until_end is True
    assert settings.segment_keys == ("region", "tier")
    assert settings.topics == ("x", "y", "z")


def test_fields_mapping_from_env_and_flags() -> None:
    settings = load_settings(env={"EMBMON_FIELDS": "embedding=payload.vector,model=svc"})
    assert dict(settings.fields) == {"embedding": "payload.vector", "model": "svc"}
    flagged = load_settings(env={}, flags={"fields": ["embedding=vec"]})
    assert dict(flagged.fields) == {"embedding": "vec"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("windw: 1h\n", "unknown setting"),
        ("metrics_port: many\n", "invalid value"),
        ("- a\n- b\n", "mapping"),
        ("time_mode: wallclock\n", "time_mode"),
    ],
)
def test_bad_files_fail_with_a_clear_message(tmp_path: Path, content: str, message: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_settings(config, env={})


def test_every_flag_help_names_its_variable() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "run", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    flat = " ".join(result.stdout.split())
    for f in dataclasses.fields(Settings):
        assert env_name(f.name) in flat, f"--help does not name {env_name(f.name)}"
