"""Benchmark 5: the scaled layout: events/s with 1 and with 2 collectors, the evaluator's cost.

(a) Collectors. A real broker (the embedded Tansu, memory storage) holds one pre-filled topic
of 6 partitions: 384-d ``embedding_b64`` events, one model, spread over 10 hours (ten 1 h
windows), made as in ``kafka_e2e.py``. Each repeat runs, in turn (the order of the first two
swapped every other repeat):

  1 collector    ``embmon run --role collector --until-end`` as a subprocess;
  2 collectors   two such subprocesses started together in one consumer group;
  single         ``embmon run --role all --until-end`` on the same topic, for context;

each collector run with a fresh group and a fresh profiles topic (3 partitions). After each
collector run an ``embmon run --role evaluator --until-end`` reads that profiles topic (timed
too, the end-to-end evaluator) and the benchmark checks that its windows hold every event; the
single run's windows are checked the same way.

Rates are events/s over the reading phase: from the first "partition assigned" log line of any
of the run's processes to the last "reached the end offsets" line (a collector writes it once
it has read its partitions to the end offsets seen at start, published every chunk and its
final tails, and committed), read as the lines are written. So interpreter start-up, the
reference load and the group join are not counted; for 2 collectors the phase starts when the
first of them has its partitions. CPU over the same phase: the embmon processes' user + system
time (all threads), the broker's, and the whole machine's busy time (``/proc/stat``; "others"
is what neither used: other work on the machine). A 2-collector run whose collectors did not
hold each partition once from the start (one joined after the broker's join delay, so both
read some partitions) is run again, up to ``--attempts`` times (see ``split_once``).

(b) The evaluator's cost per partial profile, in one process: the records of one profiles
partition as collectors publish them (per chunk: its pieces, then its seal) for 6 input
partitions x W windows x 2 models, each piece the profile of K events (K = the events of
one partition's window in (a): ``--events`` / 60) of the same 384-d
mixture (the real reference of ``common.reference_dir``), as bytes. Timed: ``partials.decode``
of every record, ``Shard.add`` of it (where a piece's profile bytes are read and merged into
its window, when its seal arrives) and ``Shard.due()`` once per round of chunks, as the
driver's turns do (closing what the watermark passed; the last window with
``everything=True``). Reported per piece, median of max(``--repeats``, 5) runs, with parts
(``WindowProfile.from_bytes`` and ``merge`` alone) and the bytes of one piece and one seal.

usage: python bench/scale_out.py [--quick] [--events N] [--repeats R] [--json OUT]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from common import T0, emit, fmt, make_reference, median, mixture, reference_dir
from kafka_e2e import _cpu_seconds, produce

from exporters.windows_log import read_windows

DIM, CENTROIDS = 384, 20
PARTITIONS, PROFILE_PARTITIONS = 6, 3
HOURS = 10  # the events span ten 1 h windows (kafka_e2e.produce)
EMBMON = Path(sys.executable).parent / "embmon"


def _busy_jiffies() -> int:
    """The whole machine's non-idle CPU time so far, in clock ticks (all cores)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4]  # less idle and iowait


@dataclass
class Proc:
    """One embmon subprocess and the moments read off its log as the lines came."""

    name: str
    cmd: list[str]
    out: Path
    popen: subprocess.Popen[str] | None = None
    begin: float | None = None  # first "partition assigned"
    end: float | None = None  # "reached the end offsets"
    cpu_begin: float = 0.0
    cpu_end: float = 0.0
    assigned: int = 0
    revoked: int = 0
    log: list[str] = field(default_factory=list)


class Marks:
    """Samples of the broker's and the machine's CPU at the phase's two ends."""

    def __init__(self, broker_pid: int) -> None:
        self.broker_pid = broker_pid
        self.lock = threading.Lock()
        self.first: tuple[float, float, int] | None = None
        self.last: tuple[float, float, int] | None = None

    def sample(self) -> tuple[float, float, int]:
        return time.perf_counter(), _cpu_seconds(self.broker_pid), _busy_jiffies()

    def begin(self) -> None:
        with self.lock:
            if self.first is None:
                self.first = self.sample()

    def end(self) -> None:
        with self.lock:
            self.last = self.sample()


def _read(proc: Proc, marks: Marks) -> None:
    assert proc.popen is not None and proc.popen.stderr is not None
    pid = proc.popen.pid
    for line in proc.popen.stderr:
        proc.log.append(line)
        if "partition assigned" in line:
            proc.assigned += 1
            if proc.begin is None:
                proc.begin, proc.cpu_begin = time.perf_counter(), _cpu_seconds(pid)
                marks.begin()
        elif "partitions revoked" in line:
            proc.revoked += 1
        elif "reached the end" in line:
            proc.end, proc.cpu_end = time.perf_counter(), _cpu_seconds(pid)
            marks.end()


def run_together(procs: Sequence[Proc], broker_pid: int, timeout_s: float) -> dict[str, Any]:
    """Start ``procs`` at once, wait for them all; the reading phase's time and CPU."""
    marks = Marks(broker_pid)
    started = time.perf_counter()
    readers = []
    for proc in procs:
        proc.popen = subprocess.Popen(
            proc.cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        )
        readers.append(threading.Thread(target=_read, args=(proc, marks), daemon=True))
        readers[-1].start()
    try:
        for proc, reader in zip(procs, readers, strict=True):
            assert proc.popen is not None
            proc.popen.wait(timeout=max(1.0, timeout_s - (time.perf_counter() - started)))
            reader.join(timeout=10)
    finally:
        for proc in procs:
            if proc.popen is not None and proc.popen.poll() is None:
                proc.popen.kill()
                proc.popen.wait()
    wall = time.perf_counter() - started
    for proc in procs:
        assert proc.popen is not None
        if proc.popen.returncode != 0 or proc.begin is None or proc.end is None:
            raise RuntimeError(
                f"{proc.name} failed ({proc.popen.returncode}):\n{''.join(proc.log[-30:])}"
            )
    assert marks.first is not None and marks.last is not None
    (t0, b0, j0), (t1, b1, j1) = marks.first, marks.last
    ticks = os.sysconf("SC_CLK_TCK")
    return {
        "phase_s": t1 - t0,
        "wall_s": wall,
        "embmon_cpu_s": sum(p.cpu_end - p.cpu_begin for p in procs),
        "broker_cpu_s": b1 - b0,
        "machine_cpu_s": (j1 - j0) / ticks,
        "processes": [
            {
                "name": p.name,
                "partitions": p.assigned,
                "revoked": p.revoked,
                "begin_s": (p.begin or t0) - t0,
                "end_s": (p.end or t1) - t0,
                "cpu_s": p.cpu_end - p.cpu_begin,
            }
            for p in procs
        ],
    }


def embmon_cmd(bootstrap: str, topic: str, group: str, out: Path, *role: str) -> list[str]:
    cmd = [str(EMBMON), "run", "--bootstrap-servers", bootstrap, "--topic", topic]
    cmd += ["--group-id", group, "--reference", str(reference_dir(DIM, CENTROIDS))]
    cmd += ["--window", "1h", "--metrics-port", "0", "--out", str(out), "--until-end", *role]
    return cmd


def windows_events(out: Path) -> tuple[int, int, bool]:
    """Events in the windows of ``out``'s windows.jsonl (the latest record of each), how many
    windows, and whether all are complete."""
    latest = {r.key: r for r in read_windows(out / "windows.jsonl")}
    events = sum(r.events for r in latest.values())
    return events, len(latest), all(r.complete for r in latest.values())


def profiles_topic_size(bootstrap: str, topic: str) -> dict[str, int]:
    """Pieces, seals and bytes on ``topic`` (read without a group, to its end)."""
    from kafka import KafkaConsumer, TopicPartition

    from agent.partials import Piece, decode

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    ends = consumer.end_offsets(parts)
    pieces = seals = size = 0
    while any(consumer.position(tp) < ends[tp] for tp in parts):
        for records in consumer.poll(timeout_ms=500).values():
            for record in records:
                size += len(record.value)
                if isinstance(decode(record.value), Piece):
                    pieces += 1
                else:
                    seals += 1
    consumer.close()
    return {"pieces": pieces, "seals": seals, "bytes": size}


def collectors_run(
    bootstrap: str, broker_pid: int, topic: str, n: int, count: int, timeout_s: float
) -> dict[str, Any]:
    """``count`` collectors together, then one evaluator over their profiles topic."""
    from demo.broker import create_topic

    tag = uuid.uuid4().hex[:8]
    profiles, group = f"bench-profiles-{tag}", f"bench-{tag}"
    create_topic(bootstrap, profiles, PROFILE_PARTITIONS)
    role = ["--profiles-topic", profiles]
    with tempfile.TemporaryDirectory(prefix="embmon-bench-scale-out-") as tmp:
        procs = [
            Proc(
                f"collector-{i}",
                embmon_cmd(bootstrap, topic, group, Path(tmp) / f"c{i}", "--role", "collector")
                + role,
                Path(tmp) / f"c{i}",
            )
            for i in range(count)
        ]
        result = run_together(procs, broker_pid, timeout_s)
        result["profiles_topic"] = profiles_topic_size(bootstrap, profiles)
        out = Path(tmp) / "evaluator"
        evaluator = Proc(
            "evaluator",
            embmon_cmd(bootstrap, topic, group, out, "--role", "evaluator") + role,
            out,
        )
        result["evaluator"] = run_together([evaluator], broker_pid, timeout_s)
        events, windows, complete = windows_events(out)
    if events != n or not complete:
        raise RuntimeError(f"the evaluator wrote {events} events (complete: {complete}), not {n}")
    result.update(collectors=count, events=n, windows=windows, events_s=n / result["phase_s"])
    return result


def split_once(result: dict[str, Any]) -> bool:
    """The collectors held each partition once, from the start: the group formed with all of
    them in its first generation. When one joins after the broker's join delay (Tansu: 3 s)
    the first reads every partition until it learns of the rebalance, possibly to the end, and
    the other reads some again (the evaluator keeps one copy): a join race, not the steady
    state this benchmark measures, so such a run is discarded (and kept in the JSON)."""
    procs = result["processes"]
    return sum(p["partitions"] for p in procs) == PARTITIONS and not any(
        p["revoked"] for p in procs
    )


def single_run(
    bootstrap: str, broker_pid: int, topic: str, n: int, timeout_s: float
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="embmon-bench-scale-out-") as tmp:
        out = Path(tmp) / "single"
        proc = Proc(
            "single", embmon_cmd(bootstrap, topic, f"bench-{uuid.uuid4().hex[:8]}", out), out
        )
        result = run_together([proc], broker_pid, timeout_s)
        events, windows, complete = windows_events(out)
    if events != n or not complete:
        raise RuntimeError(f"--role all wrote {events} events (complete: {complete}), not {n}")
    result.update(events=n, windows=windows, events_s=n / result["phase_s"])
    return result


# --- (b) the evaluator's cost per partial profile, in-process -------------------------------


def partial_records(windows: int, per_piece: int, models: Sequence[str]) -> list[bytes]:
    """One profiles partition's records: per round (a window), per input partition, a chunk:
    one piece per model, then its seal; chunk offsets [w*K, (w+1)*K) of that partition."""
    from agent.partials import Piece, Seal, Span
    from agent.window_types import WindowKey
    from exporters.records import SegmentKey
    from sketches.batch import EventBatch

    reference = make_reference(DIM, CENTROIDS)
    pool, _ = mixture(max(4 * per_piece, 20_000), DIM, CENTROIDS, seed=11)
    rng = np.random.default_rng(7)
    records = []
    for w in range(windows):
        start = int(T0) + 3600 * w
        for p in range(PARTITIONS):
            span = Span("events", p, w * per_piece, (w + 1) * per_piece)
            attempt = f"bench{p}-{w}"
            for model in models:
                at = int(rng.integers(0, len(pool) - per_piece))
                rows = pool[at : at + per_piece]
                times = start + np.linspace(0, 3599, per_piece)
                profile = reference.new_profile()
                profile.update(EventBatch(embeddings=rows, timestamps=times))
                key = WindowKey(model, SegmentKey(), start)
                records.append(Piece(span, attempt, key, per_piece, profile.to_bytes()).to_bytes())
            seal = Seal(span, attempt, start + 3599.0, len(models), PARTITIONS)
            records.append(seal.to_bytes())
    return records


def evaluate_once(records: Sequence[bytes], rounds: int) -> dict[str, float]:
    """Decode, ``Shard.add`` and ``Shard.due`` over ``records`` (``rounds`` rounds of chunks,
    ``due`` after each): seconds in each, and the windows closed."""
    from agent.merging import Shard
    from agent.partials import decode
    from sketches.profile import WindowProfile

    space = make_reference(DIM, CENTROIDS).space
    shard = Shard(
        topics=["events"],
        window_seconds=3600,
        lateness_s=0.0,
        read=lambda data: WindowProfile.from_bytes(data, space),
        persisted=set(),
        counts_rejects=lambda source: True,
    )
    per_round = len(records) // rounds
    t_decode = t_add = t_due = 0.0
    closed = merged = 0
    for r in range(rounds):
        batch = records[r * per_round : (r + 1) * per_round]
        t0 = time.perf_counter()
        messages = [decode(data) for data in batch]
        t1 = time.perf_counter()
        for offset, message in enumerate(messages, start=r * per_round):
            merged += shard.add(offset, message).merged
        t2 = time.perf_counter()
        complete, _, _ = shard.due(everything=r == rounds - 1)
        t3 = time.perf_counter()
        closed += len(complete)
        t_decode, t_add, t_due = t_decode + t1 - t0, t_add + t2 - t1, t_due + t3 - t2
    return {
        "decode_s": t_decode,
        "add_s": t_add,
        "due_s": t_due,
        "closed": closed,
        "merged": merged,
    }


def evaluator_cost(windows: int, per_piece: int, repeats: int) -> dict[str, Any]:
    from agent.partials import Piece, decode
    from sketches.profile import WindowProfile

    models = ("model-a", "model-b")
    records = partial_records(windows, per_piece, models)
    pieces = [r for r in records if isinstance(decode(r), Piece)]
    seals = len(records) - len(pieces)
    runs = [evaluate_once(records, windows) for _ in range(repeats)]
    for run in runs:
        assert run["merged"] == len(pieces) and run["closed"] == windows * len(models), run
    space = make_reference(DIM, CENTROIDS).space
    blobs = [p.profile for p in (decode(r) for r in pieces[:60]) if isinstance(p, Piece)]
    reads, merges = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        profiles = [WindowProfile.from_bytes(b, space) for b in blobs]
        t1 = time.perf_counter()
        total = profiles[0]
        for profile in profiles[1:]:
            total = total.merge(profile)
        t2 = time.perf_counter()
        reads.append((t1 - t0) / len(blobs))
        merges.append((t2 - t1) / (len(blobs) - 1))
    per = {
        k: median([r[k] for r in runs]) / len(pieces) * 1e6 for k in ("decode_s", "add_s", "due_s")
    }
    return {
        "windows": windows,
        "models": len(models),
        "partitions": PARTITIONS,
        "events_per_piece": per_piece,
        "pieces": len(pieces),
        "seals": seals,
        "piece_bytes": int(np.median([len(r) for r in pieces])),
        "seal_bytes": int(np.median([len(r) for r in records if not isinstance(decode(r), Piece)])),
        "us_per_piece": sum(per.values()),
        "us_decode": per["decode_s"],
        "us_add": per["add_s"],
        "us_due": per["due_s"],
        "us_from_bytes": median(reads) * 1e6,
        "us_merge": median(merges) * 1e6,
        "totals_us_per_piece": [
            (r["decode_s"] + r["add_s"] + r["due_s"]) / len(pieces) * 1e6 for r in runs
        ],
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--windows", type=int, default=24, help="(b): windows of pieces")
    parser.add_argument(
        "--attempts", type=int, default=3, help="runs of a repeat whose collectors overlap"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="per run, seconds")
    parser.add_argument("--json", help="write the result here too")
    args = parser.parse_args()
    if args.quick:
        args.events, args.repeats, args.windows = 6_000, 1, 4

    from demo.broker import EmbeddedBroker

    reference_dir(DIM, CENTROIDS)  # built once, cached, before anything is timed
    n = args.events
    per_piece = max(n // (HOURS * PARTITIONS), 1)
    runs: dict[str, list[dict[str, Any]]] = {"1": [], "2": [], "single": []}
    discarded: list[dict[str, Any]] = []
    load = os.getloadavg()
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap_servers
        process = broker._process  # the broker's own CPU is part of the picture
        assert process is not None
        broker_pid = process.pid
        topic = "bench-scale-out"
        started = time.perf_counter()
        size = produce(bootstrap, topic, PARTITIONS, n, DIM, True)
        print(f"{n:,} events, {size / 1e6:.0f} MB produced in "
              f"{time.perf_counter() - started:.0f} s", file=sys.stderr)  # fmt: skip
        for r in range(args.repeats):
            for count in (1, 2) if r % 2 == 0 else (2, 1):
                for _ in range(args.attempts):
                    result = collectors_run(bootstrap, broker_pid, topic, n, count, args.timeout)
                    if split_once(result):
                        break
                    discarded.append(result)
                    print(f"  {count} collectors: partitions "
                          f"{[p['partitions'] for p in result['processes']]}, not split once "
                          f"({result['phase_s']:.2f} s): run again", file=sys.stderr)  # fmt: skip
                else:
                    raise RuntimeError(f"{args.attempts} runs did not split the partitions once")
                runs[str(count)].append(result)
                print(f"  {count} collector(s): {result['phase_s']:.2f} s, "
                      f"{fmt(result['events_s'])} events/s; partitions "
                      f"{[p['partitions'] for p in result['processes']]}, revoked "
                      f"{sum(p['revoked'] for p in result['processes'])}; evaluator "
                      f"{result['evaluator']['phase_s']:.2f} s", file=sys.stderr)  # fmt: skip
            result = single_run(bootstrap, broker_pid, topic, n, args.timeout)
            runs["single"].append(result)
            print(f"  --role all: {result['phase_s']:.2f} s, {fmt(result['events_s'])} events/s",
                  file=sys.stderr)  # fmt: skip
    started = time.perf_counter()
    cost = evaluator_cost(args.windows, per_piece, max(args.repeats, 5))
    print(f"evaluator cost: {time.perf_counter() - started:.0f} s", file=sys.stderr)

    def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
        return {
            "events_s": median([x["events_s"] for x in rows]),
            "phase_s": median([x["phase_s"] for x in rows]),
            "embmon_cpu_us": median([x["embmon_cpu_s"] for x in rows]) / n * 1e6,
            "broker_cpu_us": median([x["broker_cpu_s"] for x in rows]) / n * 1e6,
            "machine_busy": median([x["machine_cpu_s"] / x["phase_s"] for x in rows]),
            "other_busy": median(
                [
                    (x["machine_cpu_s"] - x["embmon_cpu_s"] - x["broker_cpu_s"]) / x["phase_s"]
                    for x in rows
                ]
            ),
        }

    table = {key: summary(rows) for key, rows in runs.items()}
    ratio = table["2"]["events_s"] / table["1"]["events_s"]
    pairs = [b["events_s"] / a["events_s"] for a, b in zip(runs["1"], runs["2"], strict=True)]
    evaluators = runs["1"] + runs["2"]
    e2e = {
        "phase_s": median([x["evaluator"]["phase_s"] for x in evaluators]),
        "cpu_s": median([x["evaluator"]["embmon_cpu_s"] for x in evaluators]),
        "pieces": median([x["profiles_topic"]["pieces"] for x in evaluators]),
        "seals": median([x["profiles_topic"]["seals"] for x in evaluators]),
        "bytes": median([x["profiles_topic"]["bytes"] for x in evaluators]),
    }
    print(
        f"\nScale-out, events/s over the reading phase (median of {args.repeats}); {n:,} events "
        f"of {DIM}-d embedding_b64 ({size / n:,.0f} bytes each), {CENTROIDS} centroids, one "
        f"model, {PARTITIONS} partitions, 1h windows over {HOURS} h; load before {load[0]:.2f}"
    )
    print("| run | events/s | vs 1 collector | phase s | embmon CPU µs/event | broker CPU "
          "µs/event | machine busy (of 2 cores) | of which others |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for key, label in (("1", "1 collector"), ("2", "2 collectors"), ("single", "--role all")):
        t = table[key]
        print(
            f"| {label} | {fmt(t['events_s'])} | {t['events_s'] / table['1']['events_s']:.2f}x | "
            f"{t['phase_s']:.2f} | {t['embmon_cpu_us']:.1f} | {t['broker_cpu_us']:.1f} | "
            f"{t['machine_busy']:.2f} | {t['other_busy']:.2f} |"
        )
    print(f"\nratio 2/1 collectors: {ratio:.2f}x (pair by pair: "
          f"{', '.join(f'{p:.2f}' for p in pairs)}); {len(discarded)} 2-collector run(s) "
          "discarded (partitions not split once)")  # fmt: skip
    print(f"end-to-end evaluator over a collector run's profiles topic ({e2e['pieces']:,.0f} "
          f"pieces, {e2e['seals']:,.0f} seals, {e2e['bytes'] / 1e6:.1f} MB): "
          f"{e2e['phase_s']:.2f} s, CPU {e2e['cpu_s']:.2f} s")  # fmt: skip
    print(
        f"\nEvaluator cost per partial profile (in-process, median of {len(cost['runs'])}); "
        f"{cost['partitions']} input partitions x {cost['windows']} windows x {cost['models']} "
        f"models = {cost['pieces']} pieces of {cost['events_per_piece']:,} events each"
    )
    print("| µs per piece | decode | Shard.add | Shard.due | from_bytes alone | merge alone | "
          "bytes per piece | bytes per seal |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {cost['us_per_piece']:,.0f} | {cost['us_decode']:,.1f} | {cost['us_add']:,.0f} | "
        f"{cost['us_due']:,.1f} | {cost['us_from_bytes']:,.0f} | {cost['us_merge']:,.0f} | "
        f"{cost['piece_bytes']:,} | {cost['seal_bytes']:,} |"
    )
    print(f"= {cost['us_per_piece'] / cost['events_per_piece']:.3f} µs per event the piece "
          f"holds ({fmt(cost['events_per_piece'] / cost['us_per_piece'] * 1e6)} events/s of "
          "input per evaluator core at this chunk size)")  # fmt: skip
    emit(
        "scale_out",
        {
            "args": vars(args),
            "load_before": load,
            "bytes_per_event": size / n,
            "summary": table,
            "ratio": ratio,
            "ratio_pairs": pairs,
            "evaluator_e2e": e2e,
            "evaluator_cost": cost,
            "runs": runs,
            "discarded": discarded,
            "numpy": np.__version__,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
