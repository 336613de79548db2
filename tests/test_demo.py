"""`embmon demo --quick`: the seed article's story end to end (real broker, real text)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
from matplotlib import image

SPANISH_STOP_WORDS = {"la", "el", "en", "es", "que", "qué", "los", "una", "de", "por", "para"}


def test_demo_tells_the_seed_story(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "demo", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "as in the seed: days 5–7 drifted, days 1–4 did not" in result.stdout
    for step in ("1/5", "2/5", "3/5", "4/5", "5/5"):
        assert step in result.stdout

    records = [orjson.loads(line) for line in (out / "windows.jsonl").read_bytes().splitlines()]
    assert len(records) == 7
    assert [r["drifted"] for r in records] == [False] * 4 + [True] * 3
    assert all(r["model"] == "news" for r in records)

    # Figure 3: the closest-centroid mix skews on the Spanish days
    clean_mix, spanish_mix = records[0]["closest_centroid"], records[6]["closest_centroid"]
    moved = max(abs(spanish_mix.get(k, 0) - clean_mix.get(k, 0)) for k in clean_mix | spanish_mix)
    assert moved > 0.2, (clean_mix, spanish_mix)
    # Figure 4: Spanish stop words take over the frequent terms of the shifted days only
    for r in records[:4]:
        assert not SPANISH_STOP_WORDS & {t for t, _ in r["frequent_terms"][:5]}, r["frequent_terms"]
    for r in records[5:]:
        assert len(SPANISH_STOP_WORDS & {t for t, _ in r["frequent_terms"][:5]}) >= 3, r[
            "frequent_terms"
        ]
    # Figure 5: F1 falls
    f1 = [r["classification"]["f1_macro"] for r in records]
    assert min(f1[:4]) > max(f1[5:]) and f1[6] < 0.6, f1

    report = out / "report"
    html = (report / "index.html").read_text()
    assert "data:image/png;base64," in html
    pngs = sorted(report.glob("*.png"))
    assert len(pngs) >= 4
    for png in pngs:
        assert png.stat().st_size > 10_000
        pixels = image.imread(png)
        assert (pixels[..., :3] < 0.95).any(axis=-1).mean() > 0.05, f"{png.name} looks blank"
