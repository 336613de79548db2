"""Benchmark 7: ``embmon replay`` of a b64 JSONL file against whylogs 1.6.4 logging the same file.

One JSONL file (written once, cached under .cache/bench/) of ``--events`` 384-d events, each
``event_id``, ``timestamp`` (spread over 10 hours, so 1 h windows give 10 windows) and
``embedding_b64`` (base64 of little-endian float32, as bench/common.event_json writes it).
Both sides start from that file and do the whole job in one process, timed from outside (wall
clock and the process's user + system CPU from ``os.wait4``), start-up and imports included:

  embmon   the real command, ``embmon replay --reference R --input FILE --window 1h --out TMP
           --quiet`` against the benchmark reference (``reference_dir(384, 20)``); the windows
           it writes (windows.jsonl) are checked to hold every event;
  whylogs  bench/whylogs_replay_worker.py in the whylogs venv (bench/whylogs_env.sh): the file
           line by line, JSON decoded by orjson (put on the worker's path from
           .cache/bench/whylogs-orjson, the same orjson version as embmon's; ``--whylogs-json
           json`` for the standard library), base64 to float32, events grouped into the same 1 h
           windows (closed one window late, as embmon's), and each window given whylogs' best
           shot: one matrix, one ``why.log`` with the embedding metric against the same 20
           reference centroids (cosine), the profile serialised. It must count every event too.

The sides alternate (the order flips every repeat), best of ``--repeats`` each; BLAS is pinned
to one thread on both. ``--code REV`` (repeatable) adds embmon as committed at REV (its packages
exported by ``git archive`` under .cache/bench/code/, first on PYTHONPATH) to the same
alternation, for before/after figures.

usage: python bench/replay_vs_whylogs.py [--quick] [--events N] [--repeats R] [--code REV]
       [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from common import (
    CACHE,
    PACKAGES,
    ROOT,
    T0,
    emit,
    event_json,
    export_code,
    fmt,
    git,
    git_commit,
    mixture,
    reference_dir,
    side_python,
)

from exporters.windows_log import read_windows
from sketches.reference import Reference

HOURS = 10


def blas_env(threads: int) -> dict[str, str]:
    n = str(threads)
    return {"OPENBLAS_NUM_THREADS": n, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}


def events_file(n: int, dim: int) -> Path:
    """The JSONL file of ``n`` b64 events over 10 hours, written once (atomically), cached."""
    path = CACHE / f"replay-d{dim}-n{n}-b64.jsonl"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    step = HOURS * 3600 / n
    with partial.open("wb") as out:
        for start in range(0, n, 10_000):
            x, _ = mixture(min(10_000, n - start), dim, 20, seed=1000 + start)
            out.write(
                b"".join(
                    event_json(v, T0 + (start + i) * step, b64=True, event_id=start + i) + b"\n"
                    for i, v in enumerate(x)
                )
            )
    partial.rename(path)
    return path


def whylogs_python(path: str | None) -> str:
    """The whylogs venv's interpreter, creating the venv (idempotent) unless one is given."""
    return side_python("whylogs_env.sh", "whylogs-venv", path)


def whylogs_orjson(py: str) -> Path:
    """orjson for the whylogs worker (the whylogs venv has none), embmon's version, installed
    once by pip into its own directory, so the shared whylogs venv is left as whylogs_env.sh
    made it."""
    target = CACHE / f"whylogs-orjson-{orjson.__version__}"
    if not (target / "orjson").is_dir():
        partial = target.with_name(target.name + ".partial")
        pip = [py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps"]
        subprocess.run(
            [*pip, "--target", str(partial), f"orjson=={orjson.__version__}"], check=True
        )
        partial.rename(target)
    return target


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Run ``cmd``; its wall seconds, its user + system CPU seconds (``os.wait4``), stdout."""
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd, env=env, stdout=stdout, stderr=stderr, cwd=tempfile.gettempdir()
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        out, err = stdout.read().decode(), stderr.read().decode()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}{out}")
    return wall, usage.ru_utime + usage.ru_stime, out


def embmon_env(env: dict[str, str], code: Path | None) -> dict[str, str]:
    """``env`` with ``code`` (an exported commit) first on PYTHONPATH; checked to be the code
    the ``embmon`` script imports (the editable install's finder comes after PYTHONPATH)."""
    if code is None:
        return env
    path = os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH")]))
    env = {**env, "PYTHONPATH": path}
    probe = "import sys; sys.path.pop(0); import agent, sketches, exporters as e; "
    probe += "print(agent.__file__, sketches.__file__, e.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True, text=True, check=True, env=env, cwd=tempfile.gettempdir(),
    )  # fmt: skip
    files = out.stdout.split()
    if not all(Path(f).resolve().is_relative_to(code.resolve()) for f in files):
        raise RuntimeError(f"PYTHONPATH={path} does not put {code} first: {files}")
    return env


def code_reference(code: Path, dim: int, env: dict[str, str]) -> Path:
    """The benchmark reference built by the code in ``code`` (an older embmon may not read a
    newer one's): bench/common.reference_dir run with that code first on PYTHONPATH, cached in
    ``code``. Same rows, same build, so the same centroids as the work tree's."""
    script = "import sys; from pathlib import Path; sys.path.pop(0); "
    script += f"sys.path.insert(0, {str(ROOT / 'bench')!r}); import common; "
    script += f"common.CACHE = Path({str(code)!r}); print(common.reference_dir({dim}, 20))"
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True, text=True, check=True, env=env, cwd=tempfile.gettempdir(),
    )  # fmt: skip
    return Path(out.stdout.strip().splitlines()[-1])


def run_embmon(data: Path, reference: Path, n: int, env: dict[str, str]) -> dict[str, Any]:
    """The ``embmon`` script itself, as a user runs it (its sys.path[0] is the venv's bin)."""
    cmd = [str(Path(sys.executable).parent / "embmon")]
    with tempfile.TemporaryDirectory(prefix="embmon-bench-replay-") as out:
        cmd += ["replay", "--reference", str(reference), "--input", str(data)]
        cmd += ["--window", "1h", "--out", out, "--quiet"]
        wall, cpu, _ = timed(cmd, env)
        records = list(read_windows(Path(out) / "windows.jsonl"))
    events = sum(r.events for r in records)
    if events != n:
        raise RuntimeError(f"embmon replay profiled {events} events in {len(records)} windows, "
                           f"expected {n}")  # fmt: skip
    return {"wall_s": wall, "cpu_s": cpu, "events": events, "windows": len(records)}


def run_whylogs(
    py: str, data: Path, ref_files: Path, dim: int, n: int, env: dict[str, str], json_lib: str
) -> dict[str, Any]:
    cmd = [py, str(ROOT / "bench" / "whylogs_replay_worker.py"), "--input", str(data)]
    cmd += ["--centroids", str(ref_files / "centroids.npy"), "--labels"]
    cmd += [str(ref_files / "labels.json"), "--dim", str(dim), "--window-s", "3600"]
    cmd += ["--json-lib", json_lib]
    wall, cpu, out = timed(cmd, env)
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    if result["events"] != n or sum(w["events"] for w in result["windows"]) != n:
        raise RuntimeError(f"whylogs logged {result['events']} events, expected {n}")
    return {"wall_s": wall, "cpu_s": cpu, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10,000 events, 1 repeat")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads, both sides")
    parser.add_argument(
        "--code", metavar="REV", action="append", default=[],
        help="also time embmon as committed at REV (repeatable), in the same alternation",
    )  # fmt: skip
    parser.add_argument(
        "--whylogs-json", choices=("orjson", "json"), default="orjson",
        help="the whylogs worker's JSON decoder",
    )  # fmt: skip
    parser.add_argument("--whylogs-python", default=os.environ.get("WHYLOGS_PYTHON"))
    parser.add_argument("--json", help="write the result here too")
    args = parser.parse_args()
    if args.quick:
        args.events, args.repeats = 10_000, 1
    env = {**os.environ, **blas_env(args.threads)}

    py = whylogs_python(args.whylogs_python)
    wl_env = dict(env)
    if args.whylogs_json == "orjson":
        extra = str(whylogs_orjson(py))
        wl_env["PYTHONPATH"] = os.pathsep.join(filter(None, [extra, env.get("PYTHONPATH")]))
    data = events_file(args.events, args.dim)
    size = data.stat().st_size
    reference = reference_dir(args.dim, 20)
    ref = Reference.load(reference)
    sides: dict[str, tuple[dict[str, str], Path]] = {"embmon": (env, reference)}
    commits = {}
    for rev in args.code:
        commit = git_commit(rev)
        commits[f"embmon@{commit[:7]}"] = commit
        code = export_code(commit)
        code_env = embmon_env(env, code)
        sides[f"embmon@{commit[:7]}"] = (code_env, code_reference(code, args.dim, code_env))
    sides["whylogs"] = (wl_env, reference)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    with tempfile.TemporaryDirectory(prefix="embmon-bench-ref-") as tmp:
        ref_files = Path(tmp)
        np.save(ref_files / "centroids.npy", ref.space.centroids)
        (ref_files / "labels.json").write_text(json.dumps(list(ref.space.labels)))
        print(f"{args.events:,} events, {size / 1e6:.0f} MB: {data}", file=sys.stderr)
        for repeat in range(args.repeats):
            order = list(sides) if repeat % 2 == 0 else list(reversed(sides))
            for name in order:
                if name == "whylogs":
                    r = run_whylogs(
                        py,
                        data,
                        ref_files,
                        args.dim,
                        args.events,
                        sides[name][0],
                        args.whylogs_json,
                    )
                else:
                    r = run_embmon(data, sides[name][1], args.events, sides[name][0])
                runs[name].append(r)
                print(f"  {name}: {r['wall_s']:.2f} s wall, {r['cpu_s']:.2f} s CPU",
                      file=sys.stderr)  # fmt: skip

    n = args.events
    rows = []
    wl_best = min(r["wall_s"] for r in runs["whylogs"])
    wl_cpu = min(r["cpu_s"] for r in runs["whylogs"])
    for name, side_runs in runs.items():
        best = min(r["wall_s"] for r in side_runs)
        rows.append(
            {
                "side": name,
                "commit": commits.get(name),
                "events_s": n / best,
                "wall_s": best,
                "cpu_us": min(r["cpu_s"] for r in side_runs) / n * 1e6,
                "ratio_vs_whylogs": wl_best / best,
                "cpu_ratio_vs_whylogs": wl_cpu / min(r["cpu_s"] for r in side_runs),
                "runs": side_runs,
            }
        )
    wl = rows[-1]
    wl_inner = min(runs["whylogs"], key=lambda r: r["wall_s"])
    print(
        f"\nembmon replay vs whylogs {wl_inner['whylogs']}, the same b64 JSONL file, whole "
        f"process (best of {args.repeats}, alternating); {args.dim}-d, 20 centroids, cosine, 1h "
        f"windows over {HOURS} h ({len(wl_inner['windows'])} windows); BLAS threads "
        f"{args.threads}; whylogs decodes with {wl_inner['json_lib']}, one why.log per window"
    )
    print("| embmon | events | file MB | embmon events/s | whylogs events/s | ratio | "
          "CPU µs/event (embmon / whylogs) | CPU ratio | whole process s (embmon / whylogs) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows[:-1]:
        print(
            f"| {'work tree' if r['commit'] is None else r['side']} | {n:,} | {size / 1e6:.0f} | "
            f"{fmt(r['events_s'])} | {fmt(wl['events_s'])} | {r['ratio_vs_whylogs']:.2f}x | "
            f"{r['cpu_us']:.1f} / {wl['cpu_us']:.1f} | {r['cpu_ratio_vs_whylogs']:.2f}x | "
            f"{r['wall_s']:.2f} / {wl['wall_s']:.2f} |"
        )
    print(
        f"whylogs inside its process (best run): imports {wl_inner['import_s']:.2f} s, read + "
        f"decode + group {wl_inner['read_decode_s']:.2f} s, why.log + serialize "
        f"{wl_inner['whylogs_s']:.2f} s"
    )
    dirty = git("status", "--porcelain", "--", *PACKAGES).splitlines()
    if dirty:
        print(f"note: the work tree's embmon code had uncommitted changes: {dirty}")
    result = {
        "args": vars(args),
        "events": n,
        "file": str(data),
        "file_bytes": size,
        "rows": rows,
        "numpy": np.__version__,
        "work_tree_head": git("rev-parse", "HEAD"),
        "uncommitted_in_embmon_code": dirty,
        "load_average": os.getloadavg(),
    }
    emit("replay_vs_whylogs", result, args.json)


if __name__ == "__main__":
    main()
