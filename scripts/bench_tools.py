#!/usr/bin/env python3
"""Helpers of scripts/bench: reader CSVs, the smtp-sink watcher, sizes from sink
dumps, parsers for wrk and pgbench, and the figure lines. Standard library only.

Usage: bench_tools.py COMMAND ARGS...  (see the functions below)
"""

import glob
import json
import os
import random
import re
import select
import sys
import time

TOPICS = 20


def readers(n, path):
    """readers N PATH: N confirmed readers, three of twenty topics each, all at
    07:00 Europe/Berlin, half German, half English."""
    rng = random.Random(7)
    with open(path, "w") as f:
        f.write("email,topics,delivery_time,timezone,locale,consent_at,consent_ip\n")
        for i in range(int(n)):
            topics = ";".join(f"topic-{t:02d}" for t in sorted(rng.sample(range(1, TOPICS + 1), 3)))
            f.write(f"reader{i:07d}@example.org,{topics},07:00,Europe/Berlin,{'de' if i % 2 else 'en'},"
                    f"2024-05-01T09:30:00Z,192.0.2.{i % 250 + 1}\n")


def items(per_topic, summary_chars):
    """items PER_TOPIC SUMMARY_CHARS: the JSON bodies of POST /api/v1/items, one a
    line: PER_TOPIC items for each of the twenty topics, with summaries of
    SUMMARY_CHARS characters."""
    sentence = "Die Gesellschaft meldet für das dritte Quartal ein Ergebnis über den Erwartungen. "
    summary = (sentence * (int(summary_chars) // len(sentence) + 1))[: int(summary_chars)].strip()
    for t in range(1, TOPICS + 1):
        for k in range(int(per_topic)):
            print(json.dumps({
                "topics": [f"topic-{t:02d}"],
                "title": f"Meldung {k + 1} zu Thema {t}: Zahlen, Köpfe und Pläne",
                "url": f"https://presse.example/thema-{t}/meldung-{k + 1}",
                "summary": summary,
            }, ensure_ascii=False))


# Seconds the sink watcher waits after each chunk of counters it reads.
READ_PAUSE = 0.005


def sink_watch(state):
    """sink-watch STATE: reads `smtp-sink -c` from stdin and keeps STATE at
    "<messages accepted> <unix time of the last one>". The sink prints its counters
    after every "."; the time a chunk arrives is the time of its last message.

    After each chunk the watcher sleeps for READ_PAUSE, so that it reads the
    counters of many messages at once: woken for every message, it took 2-5 % of
    the machine's CPU from the pass it measures (a pass is CPU-bound on two cores;
    smtp-source is held by the sink's one core and is not). A message's time is
    then late by at most that pause, for the pass and smtp-source alike."""
    fd = sys.stdin.fileno()
    count, at, saved, tail = 0, 0.0, None, b""

    def save():
        tmp = state + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{count} {at:.6f}\n")
        os.replace(tmp, state)

    save()
    while True:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            data = os.read(fd, 65536)
            if not data:
                save()
                return
            found = re.findall(rb"mesg=(\d+)", tail + data)
            tail = data[-40:]
            if found and int(found[-1]) != count:
                count, at = int(found[-1]), time.time()
            time.sleep(READ_PAUSE)
        if saved != (count, at) and (not ready or time.time() - at > 0.05):
            save()
            saved = (count, at)


def dump_size(directory):
    """dump-size DIR: "<messages> <average bytes>" of the messages `smtp-sink -d`
    wrote under DIR, as sent on the wire (CRLF line ends, the sink's own X-…
    and Received lines left out)."""
    sizes = []
    for path in glob.glob(os.path.join(directory, "**", "*"), recursive=True):
        if not os.path.isfile(path):
            continue
        lines = open(path, "rb").read().split(b"\n")
        i = 0
        while i < len(lines) and lines[i].startswith(b"X-"):
            i += 1
        i += 1  # Received: …
        while i < len(lines) and lines[i][:1] in (b"\t", b" "):
            i += 1
        body = lines[i:]
        while body and body[-1] == b"":
            body.pop()
        sizes.append(sum(len(line) + 2 for line in body))
    if not sizes:
        print("0 0")
    else:
        print(len(sizes), round(sum(sizes) / len(sizes)))


def wrk_summary(path):
    """wrk-summary FILE: "<requests/s> <p99 ms> <requests> <errors>" from
    `wrk --latency` output; errors are socket errors and non-2xx/3xx answers."""
    text = open(path).read()
    rps = float(re.search(r"Requests/sec:\s*([\d.]+)", text).group(1))
    m = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    p99 = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    requests = int(re.search(r"(\d+) requests in", text).group(1))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    m = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    errors += int(m.group(1)) if m else 0
    print(f"{rps:.1f} {p99:.1f} {requests} {errors}")


def pgbench_summary(out_path, log_glob):
    """pgbench-summary OUT 'LOGS*': "<tps> <p99 ms> <transactions> <failed>" from
    pgbench's output and its per-transaction logs (-l)."""
    text = open(out_path).read()
    tps = float(re.search(r"tps = ([\d.]+)", text).group(1))
    m = re.search(r"number of failed transactions: (\d+)", text)
    failed = int(m.group(1)) if m else 0
    latencies = []
    for path in glob.glob(log_glob):
        for line in open(path):
            fields = line.split()
            if len(fields) >= 3:
                latencies.append(int(fields[2]))
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] / 1000 if latencies else 0
    print(f"{tps:.1f} {p99:.1f} {len(latencies)} {failed}")


def queue_left():
    """queue-left: reads /api/v1/stats from stdin, prints "<queue_depth> <digests_sent>"."""
    stats = json.load(sys.stdin)
    print(stats["queue_depth"], stats["digests_sent"])


def line(kind, *args):
    """line KIND NUMBERS...: one figure line with its baseline and ratio."""
    n = [float(a) for a in args[1:]] if kind == "fanout" else [float(a) for a in args]
    if kind == "fanout":
        label, (rate, base, size, sessions, secs, pass_s, rss_kb, pairs, low, high) = args[0], n[:10]
        print(f"fan-out {label}: {rate:,.0f} digests/s; smtp-source {base:,.0f}/s; ratio {rate / base:.2f} "
              f"(floor 0.70, goal 1.00) [{size / 1000:.1f} KB, {sessions:.0f} sessions, "
              f"{secs:.1f} s, pass {pass_s:.1f} s, peak RSS {rss_kb / 1024:.0f} MB; "
              f"median of {pairs:.0f} pairs, {low:.2f}-{high:.2f}]")
        # The median pair's CPU per message, by process (microseconds).
        serve, postgres, sink, source_sink, source = n[10:15]
        print(f"  CPU per digest: serve {serve:.0f} µs, PostgreSQL {postgres:.0f} µs, smtp-sink {sink:.0f} µs "
              f"(all {serve + postgres + sink:.0f} µs); per smtp-source message: smtp-sink {source_sink:.0f} µs, "
              f"smtp-source {source:.0f} µs")
    elif kind == "slot":
        readers_, secs, base_secs, pass_s = n
        print(f"07:00 Europe/Berlin, {readers_:,.0f} readers: last digest accepted {secs:.1f} s after the slot; "
              f"smtp-source {base_secs:.1f} s; ratio {base_secs / secs:.2f} (floor 0.70, goal 1.00) "
              f"[pass {pass_s:.1f} s]")
    elif kind == "rss":
        readers_, kb = n
        mb = kb / 1024
        print(f"peak RSS of serve, {readers_:,.0f} readers: {mb:.0f} MB; floor 150 MB, goal 50 MB; "
              f"ratio {mb / 150:.2f} of the floor, {mb / 50:.2f} of the goal")
    elif kind == "signup":
        conns, rps, p99, tps, pg_p99 = n
        print(f"sign-up (POST /subscribe, {conns:.0f} connections): {rps:,.0f}/s, p99 {p99:.0f} ms; "
              f"pgbench {tps:,.0f} tps, p99 {pg_p99:.0f} ms; ratio {rps / tps:.2f} "
              f"(floor 0.50 with p99 < 50 ms, goal 0.80 with p99 < 20 ms)")
    elif kind == "import":
        rows, secs = n
        print(f"import {rows:,.0f} rows: {secs:.1f} s = {rows / secs:,.0f} rows/s; budget 60 s per 100,000 rows: "
              f"ratio {secs / (60 * rows / 100000):.2f} (below 1.00 meets it)")
    else:
        raise SystemExit(f"unknown line kind {kind}")


def main():
    command, args = sys.argv[1], sys.argv[2:]
    {
        "readers": readers,
        "items": items,
        "sink-watch": sink_watch,
        "dump-size": dump_size,
        "wrk-summary": wrk_summary,
        "pgbench-summary": pgbench_summary,
        "queue-left": queue_left,
        "line": line,
    }[command](*args)


if __name__ == "__main__":
    main()
