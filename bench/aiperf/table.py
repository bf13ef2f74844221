#!/usr/bin/env python3
"""Prints a markdown table of bench/aiperf/run.sh results: per kind and concurrency, TTFT
p50/p99, inter-token latency p50/p99, output tokens/s and requests/s; then, at each
concurrency, each tandem kind against llama-server (output tokens/s ratio, higher is better
for tandem; TTFT p50 ratio, lower is better for tandem). Standard library only.

  bench/aiperf/table.py bench-results/aiperf-20260101-120000 [more dirs or summary.json files]
  bench/aiperf/table.py --json DIR     # the same rows as JSON

Every summary.json found under the arguments counts; when two share a kind and concurrency,
the one with the later start time wins.
"""
import argparse
import json
import os
import sys

KIND_ORDER = {"llama": 0, "tandem-collocated": 1, "tandem-disagg": 2}
BASELINE = "llama"


def load(paths):
    found = []
    for p in paths:
        if os.path.isfile(p):
            found.append(p)
            continue
        for dirpath, _, files in os.walk(p):
            if "summary.json" in files:
                found.append(os.path.join(dirpath, "summary.json"))
    rows = {}
    for f in found:
        with open(f) as fh:
            s = json.load(fh)
        s["_path"] = f
        key = (s["kind"], int(s["concurrency"]))
        if key not in rows or (s.get("start_time") or "") > (rows[key].get("start_time") or ""):
            rows[key] = s
    return [rows[k] for k in sorted(rows, key=lambda k: (k[1], KIND_ORDER.get(k[0], 9), k[0]))]


def fmt(v, digits=1):
    return "-" if v is None else f"{v:.{digits}f}"


def stat(s, metric, key):
    m = s.get(metric) or {}
    return m.get(key)


def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def main():
    ap = argparse.ArgumentParser(description="markdown table of bench/aiperf/run.sh results")
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = load(args.paths)
    if not rows:
        sys.exit("table.py: no summary.json under " + " ".join(args.paths))
    if args.json:
        json.dump([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
                  sys.stdout, indent=2)
        print()
        return

    first = rows[0]
    wl = first.get("workload", {})
    print(f"aiperf {first.get('aiperf_version')}: streaming chat, ISL {wl.get('isl')} / "
          f"OSL {wl.get('osl')} tokens (stddev 0, ignore_eos), seed {wl.get('seed')}, "
          "closed loop at the given concurrency; token counts from the server's usage.\n")
    print("| kind | concurrency | requests | TTFT p50 (ms) | TTFT p99 (ms) | ITL p50 (ms) | "
          "ITL p99 (ms) | output tok/s | req/s | out tok/req | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in rows:
        print(f"| {s['kind']} | {s['concurrency']} | {fmt(s.get('completed_requests'), 0)} | "
              f"{fmt(stat(s, 'ttft_ms', 'p50'))} | {fmt(stat(s, 'ttft_ms', 'p99'))} | "
              f"{fmt(stat(s, 'itl_ms', 'p50'), 2)} | {fmt(stat(s, 'itl_ms', 'p99'), 2)} | "
              f"{fmt(s.get('output_tokens_per_s'))} | {fmt(s.get('requests_per_s'), 2)} | "
              f"{fmt(s.get('output_tokens_avg'), 1)} | {s.get('errors', 0)} |")

    base = {s["concurrency"]: s for s in rows if s["kind"] == BASELINE}
    others = [s for s in rows if s["kind"] != BASELINE and s["concurrency"] in base]
    if others:
        print("\nRatios against llama-server at the same concurrency (output tok/s: >1 means "
              "tandem is faster; TTFT p50: <1 means tandem answers sooner):\n")
        print("| kind | concurrency | output tok/s ratio | TTFT p50 ratio |")
        print("|---|---:|---:|---:|")
        for s in others:
            b = base[s["concurrency"]]
            print(f"| {s['kind']} / llama | {s['concurrency']} | "
                  f"{fmt(ratio(s.get('output_tokens_per_s'), b.get('output_tokens_per_s')), 2)} | "
                  f"{fmt(ratio(stat(s, 'ttft_ms', 'p50'), stat(b, 'ttft_ms', 'p50')), 2)} |")
    loads = sorted({s.get("loadavg_after") for s in rows if s.get("loadavg_after")})
    if loads:
        print(f"\nloadavg after the runs: {', '.join(loads)} (the machine may be shared; "
              "compare kinds measured under the same load)")


if __name__ == "__main__":
    main()
