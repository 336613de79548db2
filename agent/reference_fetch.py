"""``embmon reference fetch``: bring a reference archive into a directory, for an init container.

A reference can be far larger than a ConfigMap may hold (1 MiB), so a Kubernetes pod gets it
at start from an object store or a web server: an init container runs
``embmon reference fetch --url URL --sha256 HEX --out /var/lib/embmon-reference`` into an
emptyDir that the agent then reads as its ``reference``. The archive is a ``.tar.gz`` of a
directory written by ``embmon reference build --out`` (``tar -C ref -czf ref.tar.gz .``, or
``tar -czf ref.tar.gz ref`` with the directory as its one top-level entry).

The agent trusts whatever it finds there, so:

- the archive is checked against ``--sha256`` before any of it is unpacked;
- no member may land outside the target: absolute names, ``..``, links pointing out, devices
  and FIFOs are refused, and tarfile's ``data`` filter runs on top;
- the reference must load with the agent's own loader (which checks its content hash) before
  it is put in place;
- it appears whole or not at all: everything is unpacked in a staging directory on the
  target's filesystem and renamed into place. An ``--out`` that already exists (an emptyDir is
  a mount point, and nothing can be renamed onto one) gets the files renamed into it one by
  one, ``reference.json`` last: a run cut short leaves files whose content hash does not
  match, which the loader refuses, never a mixed reference that loads.

Failures are one line and a non-zero exit; Kubernetes restarts a failed init container, so
there is no retry loop here.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from http.client import HTTPException
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, BinaryIO

from sketches.errors import EmbmonError
from sketches.reference import Reference

__all__ = [
    "FetchError",
    "Fetched",
    "fetch_reference",
    "shown_url",
]

SCHEMES = ("http", "https", "file")
REFERENCE_FILE = "reference.json"
_STAGING = ".embmon-fetch-"
_IGNORED = frozenset({"lost+found"})  # a volume's own entry, not content
_CHUNK = 1 << 20


class FetchError(EmbmonError):
    """The reference could not be fetched, verified, unpacked or loaded; nothing was placed."""


@dataclass(frozen=True)
class Fetched:
    """What was put in place: where, the reference's version, the archive's size and sha256."""

    path: Path
    version: str
    size: int
    sha256: str
    verified: bool


def shown_url(url: str) -> str:
    """The URL without what may be a secret: user info, query (a presigned URL's signature).

    >>> shown_url("https://user:pw@store.example:8443/refs/r.tar.gz?X-Amz-Signature=abc#x")
    'https://store.example:8443/refs/r.tar.gz?…'
    >>> shown_url("file:///srv/r.tar.gz")
    'file:///srv/r.tar.gz'
    """
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host + (f":{port}" if port is not None else "")
    return f"{parts.scheme}://{netloc}{parts.path}" + ("?…" if parts.query else "")


def _expected_sha256(value: str | None) -> str | None:
    """``--sha256`` as 64 lower-case hex digits (a ``sha256:`` prefix is accepted)."""
    if value is None:
        return None
    text = value.strip().lower().removeprefix("sha256:")
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise FetchError(f"--sha256 takes 64 hex digits, got {value!r}")
    return text


def _user_agent() -> str:
    try:
        return f"embmon/{version('embmon')}"
    except PackageNotFoundError:
        return "embmon/dev"


def _download(url: str, dest: BinaryIO, timeout_s: float) -> tuple[int, str]:
    """Copy the URL's body into ``dest``; its size and sha256. Errors name the URL as shown."""
    shown = shown_url(url)
    request = urllib.request.Request(url, headers={"User-Agent": _user_agent()})
    digest = hashlib.sha256()
    size = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                dest.write(chunk)
                size += len(chunk)
            length = response.headers.get("Content-Length")
    except urllib.error.HTTPError as exc:  # before URLError: it is one
        raise FetchError(f"cannot fetch {shown}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise FetchError(f"cannot fetch {shown}: {exc.reason}") from None
    except (HTTPException, TimeoutError, ConnectionError) as exc:  # cut short, timed out
        raise FetchError(f"cannot fetch {shown}: {type(exc).__name__}: {exc}") from None
    # http.client's read(n) ends quietly, not with IncompleteRead, when the peer closes early.
    if length is not None and length.isdigit() and int(length) != size:
        raise FetchError(f"cannot fetch {shown}: cut short after {size:,} of {int(length):,} bytes")
    return size, digest.hexdigest()


def _unsafe(member: tarfile.TarInfo) -> str | None:
    """Why ``member`` could write outside the target or make something other than files,
    directories and links within the archive; None when it is safe."""
    name = member.name
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        return "an absolute name"
    if ".." in PurePosixPath(name).parts:
        return "a '..' in its name"
    if member.isdev():
        return "a device or FIFO"
    if member.issym() or member.islnk():
        target = member.linkname
        if target.startswith(("/", "\\")) or PureWindowsPath(target).drive:
            return "a link to an absolute path"
        # A symbolic link is relative to its own directory, a hard link to the archive's root.
        base = str(PurePosixPath(name).parent) if member.issym() else ""
        resolved = os.path.normpath(os.path.join(base, target))
        if resolved == ".." or resolved.startswith("../"):
            return "a link pointing outside the archive"
        return None
    if not (member.isfile() or member.isdir()):
        return "an unsupported member type"
    return None


def _extract(archive: Path, into: Path, shown: str) -> None:
    """Unpack ``archive`` into ``into`` after checking every member; refuse it whole if any
    member is unsafe."""
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            members = tar.getmembers()
            for member in members:
                why = _unsafe(member)
                if why is not None:
                    raise FetchError(f"{shown}: refused member {member.name!r}: {why}")
            extra: dict[str, Any] = {}
            if hasattr(tarfile, "data_filter"):  # Python 3.11.4+
                extra["filter"] = "data"
            tar.extractall(into, members=members, **extra)
    except tarfile.FilterError as exc:  # the data filter's own verdict, on top of ours
        raise FetchError(f"{shown}: refused member: {exc}") from None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        detail = " ".join(str(exc).split())  # one line, whatever the library said
        raise FetchError(f"{shown} is not a readable .tar.gz archive: {detail}") from None


def _reference_root(tree: Path, shown: str) -> Path:
    """The unpacked directory holding ``reference.json``: the top, or its one directory."""
    if (tree / REFERENCE_FILE).is_file():
        return tree
    entries = list(tree.iterdir())
    if (
        len(entries) == 1
        and not entries[0].is_symlink()
        and (entries[0] / REFERENCE_FILE).is_file()
    ):
        return entries[0]
    raise FetchError(
        f"{shown} holds no reference: expected {REFERENCE_FILE} at its top level or in its one "
        "top-level directory (an `embmon reference build --out` directory)"
    )


def _load(path: Path, shown: str) -> Reference:
    try:
        return Reference.load(path)
    except EmbmonError as exc:
        raise FetchError(f"{shown} does not hold a loadable reference: {exc}") from None


def _staging_area(out: Path) -> tuple[Path, str]:
    """Where to stage, and the staging directory's name prefix: inside an existing ``out`` (a
    mount point's own filesystem), else beside it, so that the final rename never crosses
    filesystems. Leftovers of runs of this command for ``out`` that were killed are removed."""
    if out.exists():
        if not out.is_dir():
            raise FetchError(f"--out {out} exists and is not a directory")
        area, prefix = out, _STAGING
        content = [e.name for e in out.iterdir() if not e.name.startswith(_STAGING)]
        content = [name for name in content if name not in _IGNORED]
        if content and REFERENCE_FILE not in content:
            raise FetchError(
                f"--out {out} is not empty and holds no reference: fetch into a new or an "
                "empty directory"
            )
    else:
        area, prefix = out.parent, f".{out.name}{_STAGING}"
        area.mkdir(parents=True, exist_ok=True)
    for stale in area.glob(prefix + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    return area, prefix


def _place(root: Path, out: Path) -> None:
    """Rename the checked reference into place (see the module's docstring)."""
    root.chmod(0o755)  # mkdtemp made it 0700: the agent may run as another user of the group
    if not out.exists():
        os.rename(root, out)
        return
    entries = sorted(root.iterdir(), key=lambda e: e.name == REFERENCE_FILE)  # it goes last
    for entry in entries:
        target = out / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)


def fetch_reference(
    url: str, out: str | Path, *, sha256: str | None = None, timeout_s: float = 60.0
) -> Fetched:
    """Download, verify, unpack and load the reference at ``url``, then put it at ``out``.

    Raises :class:`FetchError` (with ``out`` as it was) if any step fails.
    """
    out = Path(out)
    shown = shown_url(url)
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in SCHEMES:
        raise FetchError(
            f"--url must be http://, https:// or file:// (file:///path for a local archive), "
            f"got {shown if scheme else repr(url)}"
        )
    expected = _expected_sha256(sha256)
    existed = out.exists()
    area, prefix = _staging_area(out)
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=area))
    try:
        archive = staging / "reference.tar.gz"
        with archive.open("wb") as sink:
            size, actual = _download(url, sink, timeout_s)
        if expected is not None and actual != expected:
            raise FetchError(
                f"{shown}: sha256 mismatch: expected {expected}, got {actual}; nothing written "
                f"to {out}"
            )
        tree = staging / "tree"
        tree.mkdir()
        _extract(archive, tree, shown)
        archive.unlink()  # its space back now: a large reference is twice its size until here
        root = _reference_root(tree, shown)
        reference = _load(root, shown)
        _place(root, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if existed:  # files renamed one by one into a directory that was there: check the result
        reference = _load(out, shown)
    return Fetched(out, reference.version, size, actual, expected is not None)
