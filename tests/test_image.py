"""The container image, as far as it can be checked without a Docker engine.

The Dockerfile is read by a small parser of its instructions (the subset this Dockerfile uses;
anything else it refuses rather than guesses): two stages on a slim base, a numeric non-root
user, no HEALTHCHECK, an exec-form ENTRYPOINT, nothing to build with in the final stage, a
build context (``.dockerignore``) holding what the wheel needs and nothing else.

Then the image's own command runs as the image would run it: its ENTRYPOINT and ENV, the
settings file where the ConfigMap mounts it, the rest in ``EMBMON_*`` variables, from a stand-in
for its WORKDIR, after its init container fetched the reference, against the real test broker.
The image's paths cannot exist here: :data:`IMAGE_PATHS` is the one place they are replaced.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

from agent.config import Settings
from tests.agent_scenarios import (
    MODEL,
    T0,
    Metrics,
    digits_events,
    digits_reference,
    iso,
    produce_events,
    window_records,
)
from tests.broker import new_topic

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# What the Helm chart mounts where (helm/embmon/templates/deployment.yaml).
CONFIG_FILE = "/etc/embmon/embmon.yaml"
DATA_DIR = "/var/lib/embmon"
REFERENCE_DIR = "/var/lib/embmon-reference"
VENV = "/opt/venv"
# The python base image's own ENV (Docker's default PATH, then python:*-slim's LANG).
BASE_IMAGE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}
BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|cc|clang|make|build-essential|apt-get|apk|pip3?\s+(install|wheel|download))\b"
)
_T = TypeVar("_T")


# --- a parser of the Dockerfile's instructions ----------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction (None: shell form)."""
        if not self.args.startswith("["):
            return None
        value = json.loads(self.args)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
        return value


@dataclass
class Stage:
    base: str
    name: str | None
    line: int
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self, inherited: Mapping[str, str]) -> dict[str, str]:
        """The environment after this stage's ENV instructions, in order, over ``inherited``.

        As Docker does, each ENV's values see the variables as they were before it.
        """
        env = dict(inherited)
        for instruction in self.all("ENV"):
            before = dict(env)
            env.update({k: expand(v, before) for k, v in pairs(instruction)})
        return env

    def labels(self, args: Mapping[str, str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for instruction in self.all("LABEL"):
            found.update({k: expand(v, args) for k, v in pairs(instruction)})
        return found

    def args(self, global_args: Mapping[str, str]) -> dict[str, str]:
        """Build arguments with their defaults (an ARG without one inherits the global's)."""
        found: dict[str, str] = {}
        for instruction in self.all("ARG"):
            name, sep, default = instruction.args.partition("=")
            found[name] = default if sep else global_args.get(name, "")
        return found


@dataclass(frozen=True)
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def expand(value: str, env: Mapping[str, str]) -> str:
    """``$NAME`` and ``${NAME}`` from ``env`` (unset: empty), as Docker's ENV, FROM, LABEL."""
    if ":-" in value or ":+" in value:
        raise ValueError(f"parameter modifiers are not supported by this parser: {value!r}")
    return _VAR.sub(lambda m: env.get(m.group(1) or m.group(2), ""), value)


def pairs(instruction: Instruction) -> list[tuple[str, str]]:
    """The ``key=value`` pairs of ENV or LABEL (quotes as in a shell); legacy ``ENV k v`` too."""
    words = shlex.split(instruction.args)
    if words and "=" not in words[0]:
        return [(words[0], instruction.args.split(None, 1)[1])]
    return [(w.partition("=")[0], w.partition("=")[2]) for w in words]


def logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(first line number, line) with ``\\`` continuations joined and comments dropped."""
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue  # comments (parser directives too) and blank lines; also inside RUNs
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        yield start, " ".join(p for p in pending if p)
        pending = []
    if pending:
        raise ValueError(f"line {start}: continuation runs past the end of the Dockerfile")


KNOWN = {"ARG", "FROM", "ENV", "WORKDIR", "COPY", "RUN", "LABEL", "USER", "EXPOSE"}
KNOWN |= {"ENTRYPOINT", "CMD", "HEALTHCHECK", "ADD", "VOLUME", "STOPSIGNAL", "SHELL"}


def parse_dockerfile(text: str) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line, logical in logical_lines(text):
        keyword, _, rest = logical.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword not in KNOWN:
            raise ValueError(f"line {line}: unknown instruction {keyword}")
        if "<<" in rest and keyword in ("RUN", "COPY", "ADD"):
            raise ValueError(f"line {line}: heredocs are not supported by this parser")
        if keyword == "FROM":
            words = rest.split()
            if words[0].startswith("--"):
                raise ValueError(f"line {line}: FROM flags are not supported by this parser")
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            if len(words) not in (1, 3) or (len(words) == 3 and name is None):
                raise ValueError(f"line {line}: cannot read FROM {rest}")
            stages.append(Stage(expand(words[0], global_args), name, line))
        elif not stages:
            if keyword != "ARG":
                raise ValueError(f"line {line}: only ARG may come before the first FROM")
            name, _, default = rest.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, rest, line))
    return Dockerfile(global_args, stages)


def test_the_parser_reads_what_docker_reads() -> None:
    parsed = parse_dockerfile(
        "# syntax=docker/dockerfile:1\nARG BASE=python:3.11-slim\n"
        "FROM ${BASE} AS b\nRUN a \\\n # a comment inside\n  && b\n"
        'FROM $BASE\nARG BASE\nENV A=1 \\\n    B="two words" PATH=/x:$PATH\nENV C $A and ${B}\n'
        'ENTRYPOINT ["x", "y"]\nCMD z\n'
    )
    assert [s.base for s in parsed.stages] == ["python:3.11-slim"] * 2
    assert parsed.stages[0].name == "b" and parsed.stages[0].all("RUN")[0].args == "a && b"
    final = parsed.final
    assert final.env({"PATH": "/bin"}) == {
        "A": "1", "B": "two words", "PATH": "/x:/bin", "C": "1 and two words"
    }  # fmt: skip
    assert final.args(parsed.global_args) == {"BASE": "python:3.11-slim"}
    assert final.all("ENTRYPOINT")[0].exec_form() == ["x", "y"]
    assert final.all("CMD")[0].exec_form() is None
    for bad in ("FROM x\nFOO y\n", "RUN x\n", "FROM x\nRUN <<EOF\nx\nEOF\n", "FROM x\nRUN a \\\n"):
        with pytest.raises(ValueError):
            parse_dockerfile(bad)


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE.read_text())


# --- what the Dockerfile must say -------------------------------------------------------------


def test_two_stages_on_the_same_slim_python_base(dockerfile: Dockerfile) -> None:
    assert len(dockerfile.stages) >= 2
    builder = dockerfile.stages[0]
    assert builder.name == "builder"
    bases = {s.base for s in dockerfile.stages}
    assert len(bases) == 1, bases  # the venv's interpreter is the base image's
    (base,) = bases
    assert re.fullmatch(r"python:(\d+\.\d+)-slim(-\w+)?", base), base
    python = re.match(r"python:(\d+)\.(\d+)", base)
    assert python is not None
    minimum = re.fullmatch(r">=(\d+)\.(\d+)", PYPROJECT["project"]["requires-python"])
    assert minimum is not None
    assert tuple(map(int, python.groups())) >= tuple(map(int, minimum.groups()))


def test_the_final_stage_runs_as_a_numeric_non_root_user(dockerfile: Dockerfile) -> None:
    user = dockerfile.final.last("USER")
    assert user is not None, "the final stage must set USER"
    uid, _, gid = user.args.partition(":")
    assert uid.isdigit() and gid.isdigit(), user  # runAsNonRoot can check only a number
    assert int(uid) > 0 and int(gid) > 0


def test_no_healthcheck_and_an_exec_form_entrypoint(dockerfile: Dockerfile) -> None:
    assert not any(s.all("HEALTHCHECK") for s in dockerfile.stages)  # the probes do that
    entrypoint = dockerfile.final.last("ENTRYPOINT")
    assert entrypoint is not None and entrypoint.exec_form() == ["embmon", "run"]
    cmd = dockerfile.final.last("CMD")
    assert cmd is None or cmd.exec_form() is not None
    assert [i.args for i in dockerfile.final.all("EXPOSE")] == [str(Settings().metrics_port)]


def test_nothing_to_build_with_in_the_final_stage(dockerfile: Dockerfile) -> None:
    final = dockerfile.final
    for run in final.all("RUN"):
        assert not BUILD_TOOLS.search(run.args), run
    assert not final.all("ADD")
    copies = [shlex.split(c.args) for c in final.all("COPY")]
    builder = dockerfile.stages[0].name
    assert copies == [[f"--from={builder}", VENV, VENV]], copies  # the venv, nothing else
    installs = [r.args for r in dockerfile.stages[0].all("RUN") if "install" in r.args]
    assert installs and not any("[" in r for r in installs), installs  # no extras (dev, demo)


def test_settings_come_from_the_mounted_file_and_variables(dockerfile: Dockerfile) -> None:
    final = dockerfile.final
    env = final.env({})
    assert env["EMBMON_CONFIG"] == CONFIG_FILE
    assert env["PATH"].split(":")[0] == f"{VENV}/bin"
    assert env["PYTHONDONTWRITEBYTECODE"] == env["PYTHONUNBUFFERED"] == "1"
    settings = {f"EMBMON_{f.name.upper()}" for f in dataclasses.fields(Settings)}
    assert not settings & set(env), "an EMBMON_* setting in the image overrides the mounted file"
    workdir = final.last("WORKDIR")
    assert workdir is not None and workdir.args == DATA_DIR


def test_oci_labels_match_the_project(dockerfile: Dockerfile) -> None:
    final = dockerfile.final
    labels = final.labels(final.args(dockerfile.global_args))
    project = PYPROJECT["project"]
    assert labels["org.opencontainers.image.title"] == project["name"]
    assert labels["org.opencontainers.image.version"] == project["version"]
    assert labels["org.opencontainers.image.licenses"] == project["license"]["text"]
    assert labels["org.opencontainers.image.description"] == project["description"]
    assert labels["org.opencontainers.image.base.name"] == final.base
    assert "org.opencontainers.image.revision" in labels


# --- the build context ------------------------------------------------------------------------


def _pattern(pattern: str) -> re.Pattern[str]:
    """The subset of Docker's .dockerignore patterns used here: ``*``, ``?``, ``**``, ``[..]``."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def in_context(path: str, patterns: list[str]) -> bool:
    """Whether ``path`` (relative, ``/``-separated) reaches the build: the last pattern that
    matches it, or its leading directories as deep as the pattern, decides."""
    included = True
    parts = path.split("/")
    for raw in patterns:
        negated = raw.startswith("!")
        pattern = raw.removeprefix("!").strip().strip("/")
        regex = _pattern(pattern)
        depth = len(pattern.split("/"))
        if regex.fullmatch(path) or (
            depth < len(parts) and regex.fullmatch("/".join(parts[:depth]))
        ):
            included = negated
    return included


def test_the_build_context_holds_what_the_wheel_needs_and_nothing_else(
    dockerfile: Dockerfile,
) -> None:
    lines = DOCKERIGNORE.read_text().splitlines()
    patterns = [p.strip() for p in lines if p.strip() and not p.strip().startswith("#")]
    packages = PYPROJECT["tool"]["setuptools"]["packages"]
    copied = [shlex.split(c.args)[:-1] for c in dockerfile.stages[0].all("COPY")]
    sources = {source for sources in copied for source in sources}
    assert sources == {"pyproject.toml", PYPROJECT["project"]["readme"], *packages}
    needed = ["pyproject.toml", PYPROJECT["project"]["readme"]]
    for package in packages:
        needed += [
            p.relative_to(ROOT).as_posix()
            for p in (ROOT / package).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        ]
    assert [p for p in needed if not in_context(p, patterns)] == []
    kept_out = [
        ".git/HEAD", ".venv/bin/python", "tests/test_image.py", "helm/embmon/values.yaml",
        "embmon.egg-info/PKG-INFO", "embmon-demo/windows.jsonl", "agent/__pycache__/cli.pyc",
        "__pycache__/x.pyc", "Dockerfile", ".dockerignore", "bench/run_all.py",
    ]  # fmt: skip
    assert [p for p in kept_out if in_context(p, patterns)] == []


# --- the image's command, run as the image runs it --------------------------------------------


def local(value: str, paths: Mapping[str, Path]) -> str:
    """``value`` with each of the image's paths replaced by its stand-in here, wherever one
    starts a path (also inside ``PATH``-like lists)."""

    def one(part: str) -> str:
        for image_path, here in sorted(paths.items(), key=lambda kv: -len(kv[0])):
            if part == image_path or part.startswith(image_path + "/"):
                return str(here) + part[len(image_path) :]
        return part

    return ":".join(one(part) for part in value.split(":"))


def wait_until(
    condition: Callable[[], _T | None], what: str, process: subprocess.Popen[bytes], log: Path
) -> _T:
    deadline = time.monotonic() + 45
    while True:
        value = condition()
        if value:
            return value
        if process.poll() is not None:
            pytest.fail(f"embmon exited with {process.returncode} waiting for {what}\n{_tail(log)}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{_tail(log)}")
        time.sleep(0.1)


def _tail(log: Path) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-40:])


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()
    except OSError:
        return 0, ""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.kafka
def test_the_entrypoint_runs_as_in_the_pod(
    dockerfile: Dockerfile,
    kafka_bootstrap: str,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    venv = Path(sys.executable).parent.parent
    # The one place the image's paths are replaced by stand-ins that can exist here.
    IMAGE_PATHS = {
        VENV: venv,
        CONFIG_FILE: tmp_path / "configmap" / "embmon.yaml",
        DATA_DIR: tmp_path / "data-volume",
        REFERENCE_DIR: tmp_path / "reference-emptydir",
        "/tmp": tmp_path / "tmp-emptydir",
    }
    for path in (DATA_DIR, REFERENCE_DIR, "/tmp"):
        IMAGE_PATHS[path].mkdir()  # volumes: they exist before the containers start
    IMAGE_PATHS[CONFIG_FILE].parent.mkdir()
    IMAGE_PATHS[CONFIG_FILE].write_text(
        "# the ConfigMap's embmon.yaml\nwindow: 1d\nlateness: 0s\nsession_timeout_ms: 6000\n"
        "heartbeat_interval_ms: 1000\nmax_poll_interval_ms: 10000\nlog_level: INFO\n"
    )
    final = dockerfile.final
    env = {k: local(v, IMAGE_PATHS) for k, v in final.env(BASE_IMAGE_ENV).items()}
    workdir_instruction = final.last("WORKDIR")
    assert workdir_instruction is not None
    workdir = Path(local(workdir_instruction.args, IMAGE_PATHS))
    entrypoint = final.last("ENTRYPOINT")
    assert entrypoint is not None
    cmd = final.last("CMD")
    command = [*(entrypoint.exec_form() or []), *((cmd.exec_form() or []) if cmd else [])]
    program = shutil.which(command[0], path=env["PATH"])
    assert program == str(venv / "bin" / command[0])  # the venv's bin is first on the PATH

    # The init container: the reference from an archive into its emptyDir.
    reference = digits_reference(tmp_path_factory)
    archive = tmp_path / "reference.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(reference, arcname=".")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    fetch_out = local(REFERENCE_DIR, IMAGE_PATHS)
    fetch = [program, "reference", "fetch", "--url", archive.as_uri(), "--sha256", digest]
    init = subprocess.run(
        [*fetch, "--out", fetch_out], env=env, cwd=workdir, capture_output=True, timeout=60
    )
    assert init.returncode == 0, init.stderr.decode()

    topic = new_topic(kafka_bootstrap, 2, prefix="image")
    events = digits_events(windows=2, per_window=100, seed=5)
    produce_events(kafka_bootstrap, topic, 2, [e.value for e in events])
    port = _free_port()
    pod_env = {  # what the Deployment adds, in the image's own paths
        "EMBMON_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "EMBMON_TOPICS": topic,
        "EMBMON_GROUP_ID": f"image-{os.getpid()}-{time.monotonic_ns()}",
        "EMBMON_REFERENCE": REFERENCE_DIR,
        "EMBMON_OUT": DATA_DIR,
        "EMBMON_METRICS_PORT": str(port),
    }
    env.update({k: local(v, IMAGE_PATHS) for k, v in pod_env.items()})
    log = tmp_path / "embmon.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [program, *command[1:]], env=env, cwd=workdir, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        wait_until(lambda: _get(port, "/readyz")[0] == 200, "/readyz 200", process, log)
        assert _get(port, "/healthz")[0] == 200

        def counted() -> Metrics | None:
            status, body = _get(port, "/metrics")
            scrape = Metrics(body) if status == 200 else None
            done = scrape is not None and scrape.get("embmon_events_total", model=MODEL) == len(
                events
            )
            return scrape if done and window_records(workdir) else None

        scrape = wait_until(counted, "every event counted, a window written", process, log)
        assert scrape.get("embmon_windows_closed_total", model=MODEL) == 1
        records = window_records(workdir)  # out is the data volume, the image's WORKDIR
        assert [(r["window_start"], r["events"]) for r in records] == [(iso(T0), 100)]
        assert sorted(p.name for p in IMAGE_PATHS[REFERENCE_DIR].iterdir()) == sorted(
            p.name for p in reference.iterdir()
        )

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0, _tail(log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log.read_text()
    assert "Traceback" not in text, _tail(log)
