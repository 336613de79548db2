"""The HTML report renders any windows.jsonl, with real (non-blank) charts and graceful gaps."""

from __future__ import annotations

import base64
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson
import pytest
from matplotlib.image import imread

from exporters.records import SegmentKey, WindowRecord
from exporters.report import main, render_report, write_report
from exporters.report_charts import Timeline
from exporters.windows_log import WindowsLog, read_windows
from sketches.drift import DriftResult
from sketches.errors import FormatError

FIXTURE = Path(__file__).parent / "data" / "windows_seed.jsonl"
CHARTS = ("closest_centroid", "predictions", "frequent_terms", "classification", "drift")
DAY_0 = 1_795_132_800  # 2026-11-20T00:00:00Z, the seed's first window


@pytest.fixture(scope="module")
def seed_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seed log as ``from_json`` reads it: its first-wave ``text`` lacks ``terms``, dropped.

    The report never reads ``text``; drop this once ``WindowRecord.from_json`` reads it.
    """
    log = tmp_path_factory.mktemp("seed") / "windows_seed.jsonl"
    with log.open("wb") as out:
        for line in FIXTURE.read_bytes().splitlines():
            record = orjson.loads(line)
            record.pop("text", None)
            out.write(orjson.dumps(record) + b"\n")
    return log


@pytest.fixture(scope="module")
def windows(seed_log: Path) -> list[WindowRecord]:
    return list(read_windows(seed_log))


@pytest.fixture(scope="module")
def rendered(seed_log: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("report")
    index = write_report(seed_log, out)
    assert index == out / "index.html"
    return out, index.read_text(encoding="utf-8")


def _bare(windows: list[WindowRecord]) -> list[WindowRecord]:
    """The windows with only the fields every record has (no text, no labels)."""
    return [
        replace(
            w,
            classification=None,
            frequent_terms=(),
            predictions=None,
            text=None,
            centroid_distance={},
            drift={"closest_centroid": w.drift["closest_centroid"]},
        )
        for w in windows
    ]


def _assert_real_image(path: Path) -> None:
    """A chart, not an empty canvas: some KB, many colours, a fair share of non-white pixels."""
    assert path.stat().st_size > 15_000, path
    pixels = imread(path)[..., :3]
    rgb = (pixels * 255).astype(np.uint32).reshape(-1, 3)
    colours = np.unique(rgb[:, 0] << 16 | rgb[:, 1] << 8 | rgb[:, 2])
    assert len(colours) > 100, (path, len(colours))
    non_white = np.any(pixels < 0.95, axis=-1).mean()
    assert non_white > 0.10, (path, non_white)


def test_fixture_is_the_seed_story(windows: list[WindowRecord]) -> None:
    assert len(windows) == 7
    assert [w.start for w in windows] == [DAY_0 + 86_400 * day for day in range(7)]
    assert [w.drifted for w in windows] == [False] * 4 + [True] * 3
    assert all(w.drift["closest_centroid"].drifted == w.drifted for w in windows)


def test_report_renders_every_chart(
    windows: list[WindowRecord], rendered: tuple[Path, str]
) -> None:
    out, page = rendered
    assert page.count('src="data:image/png;base64,') == len(CHARTS)
    assert 'class="note"' not in page
    for chart in CHARTS:
        _assert_real_image(out / f"news-{chart}.png")
    rows = re.findall(r"<tr[ >]", page)
    assert len(rows) == 1 + len(windows)
    assert page.count('<tr class="drifted">') == 3
    assert "2026-11-20 00:00 UTC to 2026-11-27 00:00 UTC" in page
    assert "0.370" in page  # day 7's F1 in the summary table
    assert "sha256:" in page


def test_inlined_images_are_the_written_files(rendered: tuple[Path, str]) -> None:
    out, page = rendered
    inlined = [base64.b64decode(b) for b in re.findall(r"base64,([A-Za-z0-9+/=]+)", page)]
    written = [(out / f"news-{chart}.png").read_bytes() for chart in CHARTS]
    assert inlined == written


def test_missing_optional_fields_become_notes(windows: list[WindowRecord], tmp_path: Path) -> None:
    page = render_report(_bare(windows), tmp_path).read_text(encoding="utf-8")
    assert page.count('class="note"') == 3
    assert "No window carries classification metrics" in page
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "news-closest_centroid.png",
        "news-drift.png",
    ]
    _assert_real_image(tmp_path / "news-drift.png")


def test_partial_windows_and_small_windows(windows: list[WindowRecord], tmp_path: Path) -> None:
    mixed = list(windows)
    mixed[0] = replace(
        mixed[0],
        drift={
            m: DriftResult(r.statistic, r.score, None, False) for m, r in mixed[0].drift.items()
        },
    )
    mixed[1] = replace(
        mixed[1], drift={m: r for m, r in mixed[1].drift.items() if m != "prediction"}
    )
    mixed[2] = replace(mixed[2], classification=None)
    mixed[3] = replace(mixed[3], frequent_terms=())
    mixed[4] = replace(mixed[4], closest_centroid={})
    render_report(mixed, tmp_path)
    for chart in CHARTS:
        _assert_real_image(tmp_path / f"news-{chart}.png")


def test_models_and_segments_are_separate_sections(
    windows: list[WindowRecord], tmp_path: Path
) -> None:
    news = _bare(windows)
    eu = [replace(w, segment=SegmentKey.of({"region": "eu"})) for w in news]
    other = [replace(w, model="other/model") for w in reversed(news)]
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
    records = []
    for hour in range(48):
        shares = rng.dirichlet(np.ones(14))
        start = DAY_0 + 3_600 * hour
        records.append(
            WindowRecord(
                model="images",
                segment=SegmentKey(),
                start=start,
                end=start + 3_600,
                events=100,
                drift={
                    "closest_centroid": DriftResult(
                        "hellinger", 0.4 if hour >= 40 else 0.05, 0.12, hour >= 40
                    )
                },
                closest_centroid={f"c{i}": float(s) for i, s in enumerate(shares)},
                centroid_distance={},
                reference="",
            )
        )
    page = render_report(list(reversed(records)), tmp_path).read_text(encoding="utf-8")
    assert page.count('<tr class="drifted">') == 8
    _assert_real_image(tmp_path / "images-closest_centroid.png")
    _assert_real_image(tmp_path / "images-drift.png")


def test_empty_log_gives_a_page_that_says_so(tmp_path: Path) -> None:
    empty = tmp_path / "windows.jsonl"
    empty.write_text("\n")
    page = write_report(empty, tmp_path / "out").read_text(encoding="utf-8")
    assert "no windows" in page


def test_bad_lines_name_the_file(seed_log: Path, tmp_path: Path) -> None:
    path = tmp_path / "windows.jsonl"
    path.write_bytes(seed_log.read_bytes().splitlines()[0] + b"\n{not json\n")
    with pytest.raises(FormatError, match=r"windows\.jsonl: a line is not valid JSON"):
        write_report(path, tmp_path / "out")
    path.write_text('{"model": "news"}\n')
    with pytest.raises(FormatError, match=r"windows\.jsonl: not a window record.*window_start"):
        write_report(path, tmp_path / "out")


def test_command_line(
    windows: list[WindowRecord], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = WindowsLog(tmp_path)
    log.append(_bare(windows))
    assert main(["--windows", str(log.path), "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "index.html")
    assert (tmp_path / "news-drift.png").exists()


def test_a_window_shows_its_last_record_and_a_partial_one_is_marked(
    windows: list[WindowRecord], tmp_path: Path
) -> None:
    """A log with a window emitted partial then complete, and one still partial at the end."""
    bare = _bare(windows)
    log = WindowsLog(tmp_path)
    log.append([replace(bare[0], events=11, complete=False), *bare[1:5]])
    log.append([replace(bare[0], events=29, complete=False)])  # more of it, still partial
    log.append([bare[0], replace(bare[5], events=17, complete=False)])  # day 1 now complete
    log.append([replace(bare[6], events=23, complete=False)])
    page = write_report(log.path, tmp_path / "out").read_text(encoding="utf-8")

    rows = re.findall(r"<tr[ >].*?</tr>", page)[1:]
    assert len(rows) == len(windows)  # one row per window, whatever its records
    starts = re.findall(r"<tr[^>]*><td>(\d{4}-\d\d-\d\d)", page)
    assert starts == [f"2026-11-{20 + day}" for day in range(7)]  # in time order
    numbers = [re.findall(r'<td class="num">(\d+)</td>', row)[0] for row in rows]
    assert numbers[0] == str(bare[0].events) and numbers[5:] == ["17", "23"]
    partial = [row for row in rows if '<span class="badge partial">partial</span>' in row]
    assert [re.findall(r'<td class="num">(\d+)</td>', row)[0] for row in partial] == ["17", "23"]
    assert page.count('<tr class="drifted partial">') == 2  # days 6 and 7 drifted
    assert page.count('<tr class="drifted">') == 1
    assert "<strong>2</strong> partial" in page
    assert f"{len(windows)} windows of 1 model/segment series" in page


def test_a_log_without_partial_windows_mentions_none(rendered: tuple[Path, str]) -> None:
    _, page = rendered
    body = page.split("</style>", 1)[1]
    assert "partial" not in body


def test_chart_ticks_mark_partial_windows(windows: list[WindowRecord]) -> None:
    marked = [replace(w, complete=i != 2) for i, w in enumerate(windows[:3])]
    assert Timeline(marked).ticks == ["Nov 20", "Nov 21", "Nov 22\n(partial)"]
