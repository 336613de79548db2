"""Benchmark 2: Kafka end to end, ``embmon run --until-end`` against a plain kafka-python loop.

A real broker (the embedded Tansu, memory storage) holds two pre-filled topics of the same
384-d events, one with ``embedding_b64`` (base64 float32), one with ``embedding`` as a JSON list
(written by orjson from float32, shortest round-trip digits). For each topic, in alternation:

  plain   a kafka-python consumer-group member with embmon's own consumer settings that only
          polls the records (and touches each value) until it has them all, then commits:
          the floor every Kafka consumer pays (kafka-python checks CRCs; ``crc32c`` installed);
  embmon  the real command, ``embmon run --until-end`` (decode, windows, profiles, closing,
          drift, windows.jsonl, commits), as a subprocess.

Rates are events/s over the consume phase: from the poll that brought the partition assignment
to the last record handled and committed (embmon: its "partition assigned" and "reached the
end offsets" log lines; plain: the same two moments), so the consumer-group join (seconds) and
interpreter start-up count for neither side. Whole-command wall times are printed too.

usage: python bench/kafka_e2e.py [--quick] [--events-b64 N] [--events-json N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from common import T0, emit, event_json, fmt, mixture, reference_dir

from exporters.windows_log import read_windows


def produce(bootstrap: str, topic: str, partitions: int, n: int, dim: int, b64: bool) -> int:
    """Fill ``topic`` with ``n`` events spread over 10 hours; returns the bytes written."""
    from kafka import KafkaProducer

    from demo.broker import create_topic

    create_topic(bootstrap, topic, partitions)
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, batch_size=1 << 20, max_request_size=8 << 20
    )
    total = 0
    step = 10 * 3600 / n
    for start in range(0, n, 10_000):
        x, _ = mixture(min(10_000, n - start), dim, 20, seed=1000 + start)
        for i, vector in enumerate(x):
            j = start + i
            value = event_json(vector, T0 + j * step, b64=b64, event_id=j)
            total += len(value)
            producer.send(topic, value=value, partition=j % partitions)
    producer.flush()
    producer.close()
    return total


def plain_consumer(args: argparse.Namespace) -> None:
    """The floor: poll with embmon's consumer settings, touch each value, commit, report."""
    from kafka import KafkaConsumer

    from agent.config import Settings
    from agent.kafka_source import KafkaSettings

    start = time.perf_counter()
    s = Settings()
    config = KafkaSettings(
        bootstrap_servers=args.bootstrap,
        topics=[args.topic],
        group_id=args.group,
        session_timeout_ms=s.session_timeout_ms,
        heartbeat_interval_ms=s.heartbeat_interval_ms,
        max_poll_interval_ms=s.max_poll_interval_ms,
        max_poll_records=s.max_poll_records,
        fetch_max_bytes=s.fetch_max_bytes,
        max_partition_fetch_bytes=s.max_partition_fetch_bytes,
    ).consumer_config()
    consumer = KafkaConsumer(**config)
    consumer.subscribe([args.topic])
    seen = size = 0
    assigned_at = cpu_at = None
    while seen < args.expect:
        batches = consumer.poll(timeout_ms=500)
        if assigned_at is None and consumer.assignment():
            assigned_at, cpu_at = time.perf_counter(), time.process_time()
        for records in batches.values():
            seen += len(records)
            size += sum(len(r.value) for r in records)
    consumer.commit()
    done, cpu_done = time.perf_counter(), time.process_time()
    consumer.close(autocommit=False)
    assert assigned_at is not None and cpu_at is not None
    result = {"events": seen, "bytes": size, "consume_s": done - assigned_at}
    result["consume_cpu_s"] = cpu_done - cpu_at
    result["wall_s"] = time.perf_counter() - start
    print(json.dumps(result))


def run_plain(bootstrap: str, topic: str, expect: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--plain-consumer", "--bootstrap", bootstrap]
    cmd += ["--topic", topic, "--group", f"plain-{uuid.uuid4().hex[:8]}", "--expect", str(expect)]
    started = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - started
    return result


def run_embmon(bootstrap: str, topic: str, reference: Path, expect: int) -> dict[str, Any]:
    """``embmon run --until-end`` as a subprocess, timed by its own log lines as they arrive."""
    embmon = Path(sys.executable).parent / "embmon"
    with tempfile.TemporaryDirectory(prefix="embmon-bench-out-") as out:
        cmd = [str(embmon), "run", "--bootstrap-servers", bootstrap, "--topic", topic]
        cmd += ["--group-id", f"embmon-{uuid.uuid4().hex[:8]}", "--reference", str(reference)]
        cmd += ["--window", "1h", "--metrics-port", "0", "--out", out, "--until-end"]
        started = time.perf_counter()
        marks: dict[str, tuple[float, float]] = {}
        log: list[str] = []
        with subprocess.Popen(
            cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        ) as proc:
            assert proc.stderr is not None
            for line in proc.stderr:
                log.append(line)
                for mark, text in (("begin", "partition assigned"), ("end", "reached the end")):
                    if text in line and (mark == "end" or mark not in marks):
                        marks[mark] = (time.perf_counter(), _cpu_seconds(proc.pid))
        wall = time.perf_counter() - started
        if proc.returncode != 0 or "begin" not in marks or "end" not in marks:
            raise RuntimeError(f"embmon run failed ({proc.returncode}):\n{''.join(log[-30:])}")
        records = list(read_windows(Path(out) / "windows.jsonl"))
        events = sum(record.events for record in records)
    if events != expect:
        raise RuntimeError(f"embmon profiled {events} events, expected {expect}")
    (t0, c0), (t1, c1) = marks["begin"], marks["end"]
    return {
        "events": events,
        "windows": len(records),
        "consume_s": t1 - t0,
        "consume_cpu_s": c1 - c0,
        "wall_s": wall,
    }


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process, from /proc (10 ms resolution)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--events-b64", type=int, default=100_000)
    parser.add_argument("--events-json", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the result here too")
    # the plain consumer's own process (internal)
    parser.add_argument("--plain-consumer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--group", help=argparse.SUPPRESS)
    parser.add_argument("--expect", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_consumer:
        plain_consumer(args)
        return
    if args.quick:
        args.events_b64, args.events_json, args.repeats = 10_000, 5_000, 1

    from demo.broker import EmbeddedBroker

    reference = reference_dir(args.dim, 20)
    rows = []
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap_servers
        for encoding, n in (("embedding_b64", args.events_b64), ("JSON list", args.events_json)):
            topic = f"bench-{'b64' if encoding == 'embedding_b64' else 'json'}"
            started = time.perf_counter()
            size = produce(bootstrap, topic, args.partitions, n, args.dim, encoding != "JSON list")
            print(f"{encoding}: {n:,} events, {size / 1e6:.0f} MB produced in "
                  f"{time.perf_counter() - started:.0f} s", file=sys.stderr)  # fmt: skip
            plain_runs, embmon_runs = [], []
            for _ in range(args.repeats):
                plain_runs.append(run_plain(bootstrap, topic, n))
                embmon_runs.append(run_embmon(bootstrap, topic, reference, n))
                print(f"  plain {plain_runs[-1]['consume_s']:.2f} s, embmon "
                      f"{embmon_runs[-1]['consume_s']:.2f} s", file=sys.stderr)  # fmt: skip
            plain = max(n / r["consume_s"] for r in plain_runs)
            embmon = max(n / r["consume_s"] for r in embmon_runs)
            rows.append(
                {
                    "encoding": encoding,
                    "events": n,
                    "mb": size / 1e6,
                    "bytes_per_event": size / n,
                    "plain_events_s": plain,
                    "embmon_events_s": embmon,
                    "ratio": embmon / plain,
                    "plain_cpu_us": min(r["consume_cpu_s"] for r in plain_runs) / n * 1e6,
                    "embmon_cpu_us": min(r["consume_cpu_s"] for r in embmon_runs) / n * 1e6,
                    "plain_wall_s": min(r["wall_s"] for r in plain_runs),
                    "embmon_wall_s": min(r["wall_s"] for r in embmon_runs),
                    "plain_runs": plain_runs,
                    "embmon_runs": embmon_runs,
                }
            )
    print(
        f"\nKafka end to end, events/s over the consume phase (best of {args.repeats}); "
        f"{args.dim}-d, 20 centroids, {args.partitions} partitions, 1h windows over 10 h of events"
    )
    print("| encoding | events | bytes/event | plain kafka-python | embmon run | ratio | "
          "CPU µs/event (plain / embmon) | whole command s (plain / embmon) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['encoding']} | {r['events']:,} | {r['bytes_per_event']:,.0f} | "
            f"{fmt(r['plain_events_s'])} | {fmt(r['embmon_events_s'])} | {r['ratio']:.2f}x | "
            f"{r['plain_cpu_us']:.1f} / {r['embmon_cpu_us']:.1f} | "
            f"{r['plain_wall_s']:.1f} / {r['embmon_wall_s']:.1f} |"
        )
    emit("kafka_e2e", {"args": vars(args), "rows": rows, "numpy": np.__version__}, args.json)


if __name__ == "__main__":
    main()
