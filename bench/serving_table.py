#!/usr/bin/env python3
"""The docs/PERFORMANCE.md table of a bench/serving_sweep.sh run.

    python3 bench/serving_table.py bench-results/serving-<date>

For each mode and rate: TTFT and ITL percentiles, ITL p99/p50, TPOT p50, goodput under the
sweep's shared SLOs (set from the faster system's unloaded figures) and under each mode's
own SLOs (SLO_FACTOR x that mode's unloaded medians), and the KV transfer's share of TTFT.
Goodput counts requests meeting both SLOs per second of the run.
"""
import glob
import json
import os
import statistics
import sys


def pct(values, q):
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def itl_gaps(request, skip_first=False):
    gaps, last, gaps_started = [], None, False
    for t, n in request["deltas"]:
        if last is not None and n > 0 and not (skip_first and not gaps_started):
            gaps += [(t - last) * 1000.0 / n] * n
        if last is not None and n > 0:
            gaps_started = True
        if n > 0:
            last = t
    return gaps


def goodput(run, ttft_slo, tpot_slo):
    ok = [r for r in run["requests"] if r["status"] == "OK"]
    met = [r for r in ok if r["ttft_ms"] <= ttft_slo and (r["tpot_ms"] or 0) <= tpot_slo]
    return len(met) / run["summary"]["duration_s"], len(met) / max(1, len(run["requests"]))


def main(out):
    factor = float(os.environ.get("SLO_FACTOR", 3))
    own = {}
    for mode in ("collocated", "disaggregated"):
        path = os.path.join(out, f"baseline-{mode}.json")
        if os.path.exists(path):
            base = json.load(open(path))["requests"]
            own[mode] = (factor * statistics.median(r["ttft_ms"] for r in base),
                         factor * statistics.median(r["tpot_ms"] for r in base))
    shared = (min(v[0] for v in own.values()), min(v[1] for v in own.values()))
    print(f"shared SLO: TTFT <= {shared[0]:.0f} ms, TPOT <= {shared[1]:.1f} ms")
    for mode, (a, b) in own.items():
        print(f"{mode} own SLO: TTFT <= {a:.0f} ms, TPOT <= {b:.1f} ms")
    print()
    print("| mode | rate (req/s) | ok | TTFT p50 / p99 (s) | ITL p50 / p99 (ms) | ITL p99/p50 "
          "| TPOT p50 (ms) | goodput, shared SLO (req/s, %) | goodput, own SLO (req/s, %) "
          "| KV transfer / TTFT |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    runs = []
    for path in glob.glob(os.path.join(out, "*-rate*.json")):
        run = json.load(open(path))
        runs.append((run["config"]["label"] or run["config"]["mode"], run["config"]["rate"], run))
    for mode, rate, run in sorted(runs, key=lambda x: (x[0], x[1])):
        ok = [r for r in run["requests"] if r["status"] == "OK"]
        ttft = [r["ttft_ms"] / 1000.0 for r in ok]
        gaps = [g for r in ok for g in itl_gaps(r)]
        later = [g for r in ok for g in itl_gaps(r, skip_first=True)]
        tpot = [r["tpot_ms"] for r in ok if r["tpot_ms"]]
        gs, fs = goodput(run, *shared)
        go, fo = goodput(run, *own.get(mode, shared))
        kv = [r["final"]["timings_s"]["kv_transfer"] / (r["ttft_ms"] / 1000.0) for r in ok]
        print(f"| {mode} | {rate:g} | {len(ok)}/{len(run['requests'])} "
              f"| {pct(ttft, 50):.1f} / {pct(ttft, 99):.1f} "
              f"| {pct(gaps, 50):.1f} / {pct(gaps, 99):.1f} | {pct(gaps, 99) / pct(gaps, 50):.2f} "
              f"| {pct(later, 99) / pct(later, 50):.2f} "
              f"| {pct(tpot, 50):.1f} | {gs:.4f} ({100 * fs:.0f} %) | {go:.4f} ({100 * fo:.0f} %) "
              f"| {100 * max(kv):.2f} % max |")


if __name__ == "__main__":
    main(sys.argv[1])
