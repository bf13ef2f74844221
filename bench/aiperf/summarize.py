#!/usr/bin/env python3
"""Reads one aiperf run's JSON export (DIR/aiperf/profile_export_aiperf.json) and prints a
small summary.json for bench/aiperf/table.py: TTFT and inter-token latency percentiles (ms),
output tokens/s, requests/s, the token counts aiperf saw, errors, and how the run was made.
Called by bench/aiperf/run.sh; standard library only.

  summarize.py --dir DIR --kind KIND --concurrency C [--isl N --osl N ...] > DIR/summary.json
"""
import argparse
import glob
import json
import os
import sys

TO_MS = {"ms": 1.0, "ns": 1e-6, "us": 1e-3, "s": 1e3, "sec": 1e3}
STATS = ("avg", "min", "p50", "p90", "p99", "max", "std")


def find_export(dir_):
    path = os.path.join(dir_, "aiperf", "profile_export_aiperf.json")
    if os.path.isfile(path):
        return path
    found = sorted(glob.glob(os.path.join(dir_, "aiperf", "**", "*aiperf*.json"), recursive=True))
    found = [p for p in found if not p.endswith(("_timeslices.json", "_server_metrics.json"))]
    if not found:
        sys.exit(f"summarize: no aiperf JSON export under {dir_}/aiperf")
    return found[0]


def metric(data, tag):
    m = data.get(tag)
    return m if isinstance(m, dict) else None


def stats_ms(data, tag):
    m = metric(data, tag)
    if m is None:
        return None
    scale = TO_MS.get(m.get("unit", "ms"), 1.0)
    return {k: (m[k] * scale if m.get(k) is not None else None) for k in STATS}


def value(data, tag, stat="avg"):
    m = metric(data, tag)
    return None if m is None else m.get(stat)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--kind", required=True)
    ap.add_argument("--concurrency", type=int, required=True)
    for name in ("isl", "osl", "requests", "warmup", "seed"):
        ap.add_argument(f"--{name}", type=int)
    ap.add_argument("--rate", default="", help="open-loop request rate (req/s); empty: closed loop")
    for name in ("server-cmd", "aiperf-cmd", "load-before", "load-after", "omp-wait-policy"):
        ap.add_argument(f"--{name}", default="")
    a = ap.parse_args()

    path = find_export(a.dir)
    with open(path) as f:
        data = json.load(f)

    errors = value(data, "error_request_count") or 0
    summary = {
        "kind": a.kind,
        "concurrency": a.concurrency,
        "rate": float(a.rate) if a.rate else None,
        # Requests per second that met every --goodput SLO (aiperf's "goodput"); None without.
        "goodput_per_s": value(data, "goodput"),
        "ttft_ms": stats_ms(data, "time_to_first_token"),
        "itl_ms": stats_ms(data, "inter_token_latency"),
        "request_latency_ms": stats_ms(data, "request_latency"),
        "output_tokens_per_s": value(data, "output_token_throughput"),
        "requests_per_s": value(data, "request_throughput"),
        "output_tokens_per_s_per_user": value(data, "output_token_throughput_per_user"),
        "completed_requests": value(data, "request_count"),
        "errors": int(errors),
        "input_tokens_avg": value(data, "input_sequence_length"),
        "output_tokens_avg": value(data, "output_sequence_length"),
        "output_tokens_min": value(data, "output_sequence_length", "min"),
        "output_tokens_max": value(data, "output_sequence_length", "max"),
        "benchmark_duration_s": value(data, "benchmark_duration"),
        "workload": {"isl": a.isl, "osl": a.osl, "requests": a.requests, "warmup": a.warmup,
                     "seed": a.seed, "endpoint": "chat", "streaming": True,
                     "token_counts": "server (usage)"},
        "aiperf_version": data.get("aiperf_version"),
        "aiperf_export": os.path.relpath(path, a.dir),
        "aiperf_command": a.aiperf_cmd,
        "server_command": a.server_cmd,
        "omp_wait_policy": a.omp_wait_policy or None,
        "loadavg_before": a.load_before,
        "loadavg_after": a.load_after,
        "start_time": data.get("start_time"),
        "end_time": data.get("end_time"),
        "was_cancelled": data.get("was_cancelled"),
        "error_summary": data.get("error_summary"),
    }
    missing = [k for k in ("ttft_ms", "itl_ms", "output_tokens_per_s", "requests_per_s")
               if summary[k] is None]
    if missing:
        print(f"summarize: {path} lacks {missing} (was the run streaming? did every request "
              "fail?)", file=sys.stderr)
    json.dump(summary, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
