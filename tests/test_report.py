"""The HTML report renders any windows.jsonl, with real (non-blank) charts and graceful gaps."""

from __future__ import annotations

import base64
import copy
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from matplotlib.image import imread

from exporters.report import load_windows, main, render_report, write_report
from sketches.errors import FormatError

FIXTURE = Path(__file__).parent / "data" / "windows_seed.jsonl"
CHARTS = ("closest_centroid", "predictions", "frequent_terms", "classification", "drift")


@pytest.fixture(scope="module")
def windows() -> list[dict[str, Any]]:
    return load_windows(FIXTURE)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("report")
    index = write_report(FIXTURE, out)
    assert index == out / "index.html"
    return out, index.read_text(encoding="utf-8")


def _bare(windows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The windows with only the fields every record has (no text, no labels)."""
    bare = copy.deepcopy(windows)
    for w in bare:
        for key in ("classification", "frequent_terms", "predictions", "text", "centroid_distance"):
            w.pop(key)
        w["drift"] = {"closest_centroid": w["drift"]["closest_centroid"]}
    return bare


def _assert_real_image(path: Path) -> None:
    """A chart, not an empty canvas: some KB, many colours, a fair share of non-white pixels."""
    assert path.stat().st_size > 15_000, path
    pixels = imread(path)[..., :3]
    rgb = (pixels * 255).astype(np.uint32).reshape(-1, 3)
    colours = np.unique(rgb[:, 0] << 16 | rgb[:, 1] << 8 | rgb[:, 2])
    assert len(colours) > 100, (path, len(colours))
    non_white = np.any(pixels < 0.95, axis=-1).mean()
    assert non_white > 0.10, (path, non_white)


def test_fixture_is_the_seed_story(windows: list[dict[str, Any]]) -> None:
    assert len(windows) == 7
    assert [w["drifted"] for w in windows] == [False] * 4 + [True] * 3
    assert all(w["drift"]["closest_centroid"]["drifted"] == w["drifted"] for w in windows)


def test_report_renders_every_chart(
    windows: list[dict[str, Any]], rendered: tuple[Path, str]
) -> None:
    out, page = rendered
    assert page.count('src="data:image/png;base64,') == len(CHARTS)
    assert 'class="note"' not in page
    for chart in CHARTS:
        _assert_real_image(out / f"news-{chart}.png")
    rows = re.findall(r"<tr[ >]", page)
    assert len(rows) == 1 + len(windows)
    assert page.count('<tr class="drifted">') == 3
    assert "0.370" in page  # day 7's F1 in the summary table
    assert "sha256:" in page


def test_inlined_images_are_the_written_files(rendered: tuple[Path, str]) -> None:
    out, page = rendered
    inlined = [base64.b64decode(b) for b in re.findall(r"base64,([A-Za-z0-9+/=]+)", page)]
    written = [(out / f"news-{chart}.png").read_bytes() for chart in CHARTS]
    assert inlined == written


def test_missing_optional_fields_become_notes(
    windows: list[dict[str, Any]], tmp_path: Path
) -> None:
    page = render_report(_bare(windows), tmp_path).read_text(encoding="utf-8")
    assert page.count('class="note"') == 3
    assert "No window carries classification metrics" in page
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "news-closest_centroid.png",
        "news-drift.png",
    ]
    _assert_real_image(tmp_path / "news-drift.png")


def test_partial_windows_and_small_windows(windows: list[dict[str, Any]], tmp_path: Path) -> None:
    mixed = copy.deepcopy(windows)
    del mixed[2]["classification"]
    del mixed[3]["frequent_terms"]
    del mixed[4]["closest_centroid"]
    for result in mixed[0]["drift"].values():
        result.update(threshold=None, drifted=False, reason="insufficient_events")
    del mixed[1]["drift"]["prediction"]
    render_report(mixed, tmp_path)
    for chart in CHARTS:
        _assert_real_image(tmp_path / f"news-{chart}.png")


def test_models_and_segments_are_separate_sections(
    windows: list[dict[str, Any]], tmp_path: Path
) -> None:
    news = _bare(windows)
    eu = [dict(w, segment={"region": "eu"}) for w in news]
    other = [dict(w, model="other/model") for w in reversed(news)]
    page = render_report(news + eu + other, tmp_path).read_text(encoding="utf-8")
    assert re.findall(r"<h2 [^>]*>Model ([^<]*)</h2>", page) == [
        "news",
        "news · region=eu",
        "other/model",
    ]
    assert (tmp_path / "news-region_eu-closest_centroid.png").exists()
    assert (tmp_path / "other_model-drift.png").exists()
    assert page.count('href="#') == 3


def test_many_windows_and_many_centroids(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    start = datetime(2026, 11, 20, tzinfo=UTC)
    records = []
    for hour in range(48):
        shares = rng.dirichlet(np.ones(14))
        begin = start + timedelta(hours=hour)
        records.append(
            {
                "model": "images",
                "window_start": begin.isoformat().replace("+00:00", "Z"),
                "window_end": (begin + timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
                "events": 100,
                "drifted": hour >= 40,
                "drift": {
                    "closest_centroid": {
                        "statistic": "hellinger",
                        "score": 0.4 if hour >= 40 else 0.05,
                        "threshold": 0.12,
                        "drifted": hour >= 40,
                    }
                },
                "closest_centroid": {f"c{i}": float(s) for i, s in enumerate(shares)},
            }
        )
    render_report(list(reversed(records)), tmp_path)
    _assert_real_image(tmp_path / "images-closest_centroid.png")
    _assert_real_image(tmp_path / "images-drift.png")


def test_empty_log_gives_a_page_that_says_so(tmp_path: Path) -> None:
    empty = tmp_path / "windows.jsonl"
    empty.write_text("\n")
    page = write_report(empty, tmp_path / "out").read_text(encoding="utf-8")
    assert "no windows" in page


def test_bad_lines_are_reported_with_their_number(tmp_path: Path) -> None:
    path = tmp_path / "windows.jsonl"
    path.write_bytes(FIXTURE.read_bytes().splitlines()[0] + b"\n{not json\n")
    with pytest.raises(FormatError, match=r":2: not valid JSON"):
        load_windows(path)
    path.write_text('{"model": "news"}\n')
    with pytest.raises(FormatError, match="window_start"):
        load_windows(path)


def test_command_line(
    windows: list[dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "windows.jsonl"
    log.write_bytes(b"".join(orjson.dumps(w) + b"\n" for w in _bare(windows)))
    assert main(["--windows", str(log), "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "index.html")
    assert (tmp_path / "news-drift.png").exists()
