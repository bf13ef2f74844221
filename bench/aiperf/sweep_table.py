#!/usr/bin/env python3
"""Prints a markdown table of an open-loop bench/aiperf/run.sh sweep (RATES=...): per
request rate, each kind's TTFT, ITL, throughput and goodput (requests/s meeting every
--goodput SLO), then each kind's goodput against tandem-collocated at the same rate.

    bench/aiperf/sweep_table.py bench-results/aiperf-sweep-2026-11-28
"""

import glob
import json
import os
import sys

BASELINE = "tandem-collocated"


def fmt(v, digits=1):
    return "-" if v is None else f"{v:.{digits}f}"


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    rows = []
    for root in sys.argv[1:]:
        for path in sorted(glob.glob(os.path.join(root, "**", "summary.json"), recursive=True)):
            with open(path) as f:
                s = json.load(f)
            if s.get("rate") is not None:
                rows.append(s)
    if not rows:
        sys.exit("sweep_table: no open-loop summary.json (rate set) found")
    rows.sort(key=lambda s: (s["rate"], s["kind"]))
    print("| rate (req/s) | kind | TTFT p50 (ms) | TTFT p99 (ms) | ITL p50 (ms) | ITL p99 (ms) | "
          "output tok/s | req/s | goodput (req/s) | errors |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in rows:
        print(f"| {s['rate']:g} | {s['kind']} | {fmt(s['ttft_ms']['p50'])} | "
              f"{fmt(s['ttft_ms']['p99'])} | {fmt(s['itl_ms']['p50'], 2)} | "
              f"{fmt(s['itl_ms']['p99'], 2)} | {fmt(s['output_tokens_per_s'])} | "
              f"{fmt(s['requests_per_s'], 2)} | {fmt(s.get('goodput_per_s'), 2)} | {s['errors']} |")
    base = {s["rate"]: s for s in rows if s["kind"] == BASELINE}
    others = [s for s in rows if s["kind"] != BASELINE and s["rate"] in base]
    if others:
        print(f"\nGoodput against {BASELINE} at the same rate (>1: more requests within the SLOs):\n")
        print("| rate (req/s) | kind | goodput ratio | ITL p99 ratio |")
        print("|---:|---|---:|---:|")
        for s in others:
            b = base[s["rate"]]
            g, gb = s.get("goodput_per_s"), b.get("goodput_per_s")
            ratio = "-" if g is None or not gb else f"{g / gb:.2f}"
            itl = "-" if not b["itl_ms"]["p99"] else f"{s['itl_ms']['p99'] / b['itl_ms']['p99']:.2f}"
            print(f"| {s['rate']:g} | {s['kind']} / collocated | {ratio} | {itl} |")


if __name__ == "__main__":
    main()
