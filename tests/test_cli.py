"""The two commands of the statistics core, as a user runs them: reference build, replay."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
from sklearn.datasets import load_digits

from sketches.reference import Reference

DAY = 86_400
START = 1_763_596_800  # 2025-11-20T00:00:00Z


def embmon(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Digits split into training rows and seven days of events; days 6-7 half corrupted."""
    root = tmp_path_factory.mktemp("cli")
    digits = load_digits()
    x, y = digits.data.astype(np.float32), digits.target.astype(str)
    rng = np.random.default_rng(11)
    order = rng.permutation(len(x))
    train, test = order[:1200], order[1200:]
    np.save(root / "train.npy", x[train])
    np.save(root / "labels.npy", y[train])
    lines = []
    for day in range(7):
        for i in range(250):
            row = int(test[rng.integers(len(test))])
            vector = x[row][::-1] if day >= 5 and i % 2 else x[row]
            event = {
                "timestamp": START + day * DAY + i * 300,
                "model": "digits",
                "embedding": vector.tolist(),
                "target": y[row],
            }
            lines.append(orjson.dumps(event))
        lines.append(b'{"embedding": "oops"}')
    (root / "events.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    built = embmon(
        "reference",
        "build",
        "--input",
        root / "train.npy",
        "--labels",
        root / "labels.npy",
        "--method",
        "pca-centroids",
        "--components",
        "20",
        "--distance",
        "euclidean",
        "--rounds",
        "120",
        "--out",
        root / "ref",
    )
    assert built.returncode == 0, built.stderr
    assert "reference sha256:" in built.stdout
    return root


def test_replay_writes_the_contract_and_flags_the_shifted_days(scenario: Path) -> None:
    result = embmon(
        "replay",
        "--reference",
        scenario / "ref",
        "--input",
        scenario / "events.jsonl",
        "--window",
        "1d",
        "--out",
        scenario / "out",
    )
    assert result.returncode == 0, result.stderr
    assert "7 windows (2 drifted), 1,750 events, rejected {'wrong_type': 7}" in result.stdout
    records = [
        orjson.loads(line)
        for line in (scenario / "out" / "windows.jsonl").read_bytes().splitlines()
    ]
    assert [r["window_start"] for r in records] == [f"2025-11-{20 + d}T00:00:00Z" for d in range(7)]
    assert [r["events"] for r in records] == [250] * 7
    assert [r["drifted"] for r in records] == [False] * 5 + [True] * 2
    for record in records:
        cc = record["drift"]["closest_centroid"]
        assert set(cc) - {"contributors"} == {"statistic", "score", "threshold", "drifted"}
        parts = cc.get("contributors", [])  # the centroids whose share moved most
        assert 1 <= len(parts) <= 3
        assert {p["part"] for p in parts} <= set(record["centroid_distance"])
        assert cc["statistic"] == "hellinger"
        assert sum(record["closest_centroid"].values()) == pytest.approx(1.0)
        assert set(record["centroid_distance"]) == {str(d) for d in range(10)}
        assert record["reference"].startswith("sha256:")
    # one table line per window, in the order they closed
    assert sum("DRIFT" in line for line in result.stdout.splitlines()) == 2
    profiles = sorted((scenario / "out" / "profiles").glob("digits~*/*/*.bin"))
    assert len(profiles) == 7


def test_replay_of_parquet_equals_replay_of_jsonl(scenario: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [orjson.loads(line) for line in (scenario / "events.jsonl").read_bytes().splitlines()]
    good = [r for r in rows if isinstance(r.get("embedding"), list)]
    pq.write_table(pa.Table.from_pylist(good), scenario / "events.parquet")
    result = embmon(
        "replay",
        "--reference",
        scenario / "ref",
        "--input",
        scenario / "events.parquet",
        "--window",
        "1d",
        "--out",
        scenario / "out-parquet",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    a = [orjson.loads(x) for x in (scenario / "out" / "windows.jsonl").read_bytes().splitlines()]
    b = [
        orjson.loads(x)
        for x in (scenario / "out-parquet" / "windows.jsonl").read_bytes().splitlines()
    ]
    assert [(r["events"], r["drifted"], r["closest_centroid"]) for r in a] == [
        (r["events"], r["drifted"], r["closest_centroid"]) for r in b
    ]


def test_reference_from_events_with_mapped_fields(scenario: Path, tmp_path: Path) -> None:
    x = np.load(scenario / "train.npy")
    y = np.load(scenario / "labels.npy")
    events = tmp_path / "train.jsonl"
    events.write_bytes(
        b"".join(
            orjson.dumps({"payload": {"vector": v.tolist()}, "digit": label}) + b"\n"
            for v, label in zip(x, y, strict=True)
        )
    )
    result = embmon(
        "reference",
        "build",
        "--input",
        events,
        "--field",
        "embedding=payload.vector",
        "--label-field",
        "digit",
        "--method",
        "pca-centroids",
        "--components",
        "10",
        "--probes",
        "16",
        "--rounds",
        "50",
        "--out",
        tmp_path / "ref",
    )
    assert result.returncode == 0, result.stderr
    assert (
        "10 centroids (0, 1, 2, 3, 4, 5, 6, 7, …), dim 64, 10 PCA components, 16 residual probes"
        in result.stdout
    )
    assert Reference.load(tmp_path / "ref").profile.sample.components == 10 + 16
    unmapped = embmon(
        "reference", "build", "--input", events, "--rounds", "50", "--out", tmp_path / "r2"
    )
    assert unmapped.returncode == 2
    assert "no event carries 'embedding' or 'embedding_b64'" in unmapped.stderr


def test_bad_invocations_say_what_is_wrong(tmp_path: Path) -> None:
    missing = embmon(
        "replay",
        "--reference",
        tmp_path / "nope",
        "--input",
        tmp_path / "x.jsonl",
        "--window",
        "1d",
        "--out",
        tmp_path / "out",
    )
    assert missing.returncode == 2
    assert "embmon reference build" in missing.stderr
    bad_window = embmon(
        "replay",
        "--reference",
        tmp_path,
        "--input",
        tmp_path / "x.jsonl",
        "--window",
        "a while",
        "--out",
        tmp_path / "out",
    )
    assert bad_window.returncode == 2


def test_replay_openmetrics_without_term_labels_carries_no_event_text(
    scenario: Path, tmp_path: Path
) -> None:
    events = tmp_path / "text.jsonl"
    lines = [
        orjson.dumps(
            {
                "timestamp": START + i * 60,
                "embedding": np.zeros(64).tolist(),
                "text": f"patient {i % 3} said secret",
            }
        )
        for i in range(50)
    ]
    events.write_bytes(b"\n".join(lines) + b"\n")
    files = {}
    for flag in ([], ["--no-term-labels"]):
        om = tmp_path / f"om{len(flag)}.txt"
        result = embmon(
            "replay",
            "--reference",
            scenario / "ref",
            "--input",
            events,
            "--out",
            tmp_path / f"out{len(flag)}",
            "--openmetrics",
            om,
            "--quiet",
            *flag,
        )
        assert result.returncode == 0, result.stderr
        files[bool(flag)] = om.read_text()
    assert 'term="secret"' in files[False]
    assert "secret" not in files[True] and "patient" not in files[True]
    assert "embmon_drift_score" in files[True]
