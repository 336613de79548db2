"""``embmon reference fetch`` as an init container runs it: over real HTTP and ``file://``.

A good archive lands whole and loads; a wrong checksum, an unsafe member, a 404, a file that is
no archive or an archive that holds no reference leave ``--out`` as it was and say why in one
line, with exit status 2.
"""

from __future__ import annotations

import functools
import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from sketches.reference import Reference
from tests.agent_scenarios import digits_reference

Member = tuple[tarfile.TarInfo, bytes | None]


class _Quiet(SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/cut-short.tar.gz":  # a proxy that drops the connection midway
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"\x1f\x8b" + b"\0" * 100)
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A directory and the base URL of a real HTTP server on 127.0.0.1 serving it."""
    root = tmp_path_factory.mktemp("served")
    handler = functools.partial(_Quiet, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return digits_reference(tmp_path_factory)


def make_archive(
    path: Path, reference: Path | None, *, top: str = ".", extra: tuple[Member, ...] = ()
) -> str:
    """A .tar.gz of ``reference``'s files under ``top`` plus ``extra`` members; its sha256."""
    with tarfile.open(path, "w:gz") as tar:
        if reference is not None:
            tar.add(reference, arcname=top)
        for info, data in extra:
            tar.addfile(info, None if data is None else io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def file_member(name: str, data: bytes = b"evil\n") -> Member:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def link_member(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def fetch(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """``embmon reference fetch ARGS`` through the CLI's main: (status, stdout, stderr)."""
    status = main(["reference", "fetch", *map(str, args)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def one_line_error(status: int, err: str, *expected: str) -> None:
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("embmon: error: "), err
    for text in expected:
        assert text in lines[0], lines[0]


def test_a_good_archive_over_http_lands_whole_and_loads(
    served: tuple[Path, str], reference_dir: Path, tmp_path: Path, capsys: Any
) -> None:
    root, base = served
    digest = make_archive(root / "good.tar.gz", reference_dir)
    out = tmp_path / "volume" / "embmon-reference"

    status, printed, err = fetch(
        capsys, "--url", f"{base}/good.tar.gz", "--sha256", digest.upper(), "--out", out
    )

    assert (status, err) == (0, "")
    loaded = Reference.load(out)
    original = Reference.load(reference_dir)
    assert loaded.version == original.version
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference_dir.iterdir())
    assert sorted(p.name for p in out.parent.iterdir()) == ["embmon-reference"]  # no staging
    assert f"reference {original.version} fetched from {base}/good.tar.gz into {out}" in printed
    assert f"sha256 {digest} (verified)" in printed
    assert (out.stat().st_mode & 0o777) == 0o755


def test_file_url_into_an_existing_empty_mount_point_with_the_directory_as_top_entry(
    reference_dir: Path, tmp_path: Path
) -> None:
    """As in the pod: --out is an emptyDir's mount point (it exists, nothing can replace it),
    the archive has the reference directory as its one entry; the real `embmon` script."""
    archive = tmp_path / "ref.tar.gz"
    digest = make_archive(archive, reference_dir, top="ref")
    out = tmp_path / "embmon-reference"
    out.mkdir()
    (out / ".embmon-fetch-killed").mkdir()  # what a fetch killed midway left behind
    (out / ".embmon-fetch-killed" / "reference.tar.gz").write_bytes(b"partial")
    embmon = Path(sys.executable).with_name("embmon")

    done = subprocess.run(
        [embmon, "reference", "fetch", "--url", archive.as_uri(), "--out", out, "--sha256", digest],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert Reference.load(out).version == Reference.load(reference_dir).version
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference_dir.iterdir())
    assert "(verified)" in done.stdout


def test_a_second_fetch_replaces_the_reference_in_place(
    reference_dir: Path, tmp_path: Path, capsys: Any
) -> None:
    """An init container that runs again (the pod restarted) finds its earlier reference."""
    archive = tmp_path / "ref.tar.gz"
    make_archive(archive, reference_dir)
    out = tmp_path / "ref"
    assert fetch(capsys, "--url", archive.as_uri(), "--out", out)[0] == 0
    (out / "profile.bin").write_bytes(b"damaged")
    with pytest.raises(ValueError):
        Reference.load(out)

    status, printed, err = fetch(capsys, "--url", archive.as_uri(), "--out", out)

    assert (status, err) == (0, ""), err
    assert "not verified: pin it with --sha256" in printed
    assert Reference.load(out).version == Reference.load(reference_dir).version
    assert not [p for p in out.iterdir() if p.name.startswith(".embmon-fetch-")]


@pytest.mark.parametrize("existing", [False, True], ids=["new-out", "empty-mount-point"])
def test_a_wrong_sha256_is_refused_and_nothing_is_left_at_out(
    served: tuple[Path, str], reference_dir: Path, tmp_path: Path, capsys: Any, existing: bool
) -> None:
    root, base = served
    make_archive(root / "checked.tar.gz", reference_dir)
    out = tmp_path / "ref"
    if existing:
        out.mkdir()

    status, printed, err = fetch(
        capsys, "--url", f"{base}/checked.tar.gz", "--out", out, "--sha256", "0" * 64
    )

    one_line_error(status, err, "sha256 mismatch", "expected " + "0" * 64)
    assert printed == ""
    if existing:
        assert list(out.iterdir()) == []
    else:
        assert list(tmp_path.iterdir()) == []


UNSAFE = {
    "dot-dot": (file_member("../evil"), "a '..' in its name"),
    "dot-dot-inside": (file_member("sub/../../evil"), "a '..' in its name"),
    "absolute": (file_member("/tmp/embmon-evil"), "an absolute name"),
    "symlink-out": (link_member("escape", "../../evil"), "a link pointing outside"),
    "symlink-absolute": (link_member("passwd", "/etc/passwd"), "a link to an absolute path"),
    "hardlink-out": (link_member("hard", "../evil", tarfile.LNKTYPE), "a link pointing outside"),
    "device": (link_member("dev", "", tarfile.CHRTYPE), "a device or FIFO"),
    "fifo": (link_member("pipe", "", tarfile.FIFOTYPE), "a device or FIFO"),
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_an_archive_with_an_unsafe_member_is_refused_whole(
    reference_dir: Path, tmp_path: Path, capsys: Any, case: str
) -> None:
    member, why = UNSAFE[case]
    here = tmp_path / "work"
    here.mkdir()
    archive = here / "evil.tar.gz"
    make_archive(archive, reference_dir, extra=(member,))
    out = here / "volume" / "ref"

    status, _, err = fetch(capsys, "--url", archive.as_uri(), "--out", out)

    one_line_error(status, err, f"refused member {member[0].name!r}", why)
    assert not out.exists()
    assert sorted(p.name for p in here.iterdir()) == ["evil.tar.gz", "volume"]
    assert list((here / "volume").iterdir()) == []  # no staging left either
    assert not (tmp_path / "evil").exists()
    assert not Path("/tmp/embmon-evil").exists()


def test_a_link_inside_the_archive_is_allowed(
    reference_dir: Path, tmp_path: Path, capsys: Any
) -> None:
    archive = tmp_path / "linked.tar.gz"
    make_archive(archive, reference_dir, extra=(link_member("docs/current", "../reference.json"),))
    out = tmp_path / "ref"

    status, _, err = fetch(capsys, "--url", archive.as_uri(), "--out", out)

    assert (status, err) == (0, "")
    assert (out / "docs" / "current").resolve() == (out / "reference.json").resolve()


def test_a_404_says_so_in_one_line(served: tuple[Path, str], tmp_path: Path, capsys: Any) -> None:
    _, base = served
    status, _, err = fetch(capsys, "--url", f"{base}/missing.tar.gz", "--out", tmp_path / "ref")
    one_line_error(status, err, f"cannot fetch {base}/missing.tar.gz: HTTP 404")
    assert list(tmp_path.iterdir()) == []


def test_a_download_cut_short_says_so(
    served: tuple[Path, str], tmp_path: Path, capsys: Any
) -> None:
    _, base = served
    status, _, err = fetch(capsys, "--url", f"{base}/cut-short.tar.gz", "--out", tmp_path / "ref")
    one_line_error(
        status, err, f"cannot fetch {base}/cut-short.tar.gz: cut short after 102 of 100,000 bytes"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_presigned_urls_query_is_never_printed(
    served: tuple[Path, str], reference_dir: Path, tmp_path: Path, capsys: Any
) -> None:
    root, base = served
    make_archive(root / "signed.tar.gz", reference_dir)
    url = f"{base}/signed.tar.gz?X-Amz-Signature=s3cr3t"
    status, printed, err = fetch(capsys, "--url", url, "--out", tmp_path / "ok")
    assert status == 0 and "s3cr3t" not in printed + err
    assert f"{base}/signed.tar.gz?…" in printed
    status, _, err = fetch(capsys, "--url", url.replace("signed", "gone"), "--out", tmp_path / "x")
    one_line_error(status, err, "HTTP 404")
    assert "s3cr3t" not in err


def test_a_file_that_is_no_archive_is_refused(tmp_path: Path, capsys: Any) -> None:
    bogus = tmp_path / "ref.tar.gz"
    bogus.write_bytes(b"<html>Access denied</html>\n")
    status, _, err = fetch(capsys, "--url", bogus.as_uri(), "--out", tmp_path / "ref")
    one_line_error(status, err, "is not a readable .tar.gz archive")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.tar.gz"]


def test_a_truncated_archive_is_refused(reference_dir: Path, tmp_path: Path, capsys: Any) -> None:
    archive = tmp_path / "ref.tar.gz"
    make_archive(archive, reference_dir)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    status, _, err = fetch(capsys, "--url", archive.as_uri(), "--out", tmp_path / "ref")
    one_line_error(status, err, "is not a readable .tar.gz archive")
    assert not (tmp_path / "ref").exists()


def test_an_archive_without_a_loadable_reference_is_refused(
    reference_dir: Path, tmp_path: Path, capsys: Any
) -> None:
    empty = tmp_path / "empty.tar.gz"
    make_archive(empty, None, extra=(file_member("README", b"hello\n"),))
    status, _, err = fetch(capsys, "--url", empty.as_uri(), "--out", tmp_path / "a")
    one_line_error(status, err, "holds no reference")

    damaged_dir = tmp_path / "damaged"
    shutil.copytree(reference_dir, damaged_dir)
    (damaged_dir / "profile.bin").write_bytes(b"not a profile")
    damaged = tmp_path / "damaged.tar.gz"
    make_archive(damaged, damaged_dir)
    status, _, err = fetch(capsys, "--url", damaged.as_uri(), "--out", tmp_path / "b")
    one_line_error(status, err, "does not hold a loadable reference")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_an_out_holding_something_else_is_left_alone(
    reference_dir: Path, tmp_path: Path, capsys: Any
) -> None:
    archive = tmp_path / "ref.tar.gz"
    make_archive(archive, reference_dir)
    out = tmp_path / "data"
    out.mkdir()
    (out / "windows.jsonl").write_text("{}\n")
    status, _, err = fetch(capsys, "--url", archive.as_uri(), "--out", out)
    one_line_error(status, err, "is not empty and holds no reference")
    assert [p.name for p in out.iterdir()] == ["windows.jsonl"]


@pytest.mark.parametrize(
    ("url", "sha256", "expected"),
    [
        ("ftp://example.com/ref.tar.gz", None, "--url must be http://, https:// or file://"),
        ("/srv/ref.tar.gz", None, "file:///path for a local archive"),
        ("file:///nonexistent/ref.tar.gz", "abc", "--sha256 takes 64 hex digits"),
        ("file:///nonexistent/ref.tar.gz", None, "cannot fetch file:///nonexistent/ref.tar.gz"),
    ],
)
def test_bad_arguments_say_what_to_pass(
    tmp_path: Path, capsys: Any, url: str, sha256: str | None, expected: str
) -> None:
    extra = ["--sha256", sha256] if sha256 else []
    status, _, err = fetch(capsys, "--url", url, "--out", tmp_path / "ref", *extra)
    one_line_error(status, err, expected)
    assert list(tmp_path.iterdir()) == []
