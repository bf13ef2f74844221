#!/usr/bin/env python3
"""Plots `tandem bench serve --json` files from a request-rate sweep.

One PNG, three panels against request rate: TTFT (p50 solid, p99 dashed), ITL (the same)
and goodput, one colour per label (config.label, else the mode). Each file is one
point. With --slo-ttft-ms/--slo-tpot-ms, goodput is recomputed from the per-request
records with those SLOs (so runs made with different SLOs compare); otherwise each file's
own goodput is used. Also prints the points as a table.

    python3 bench/plot_serving.py --out serving.png results/*.json

Needs matplotlib (python3 -m pip install matplotlib).
"""

import argparse
import collections
import json
import sys


def load(path):
    with open(path) as f:
        data = json.load(f)
    for key in ("config", "summary"):
        if key not in data:
            sys.exit(f"{path}: not a `tandem bench serve` JSON file (no '{key}')")
    return data


def label_of(data):
    config = data["config"]
    return config.get("label") or config.get("mode") or "run"


def rate_of(data):
    """The offered rate; closed-loop runs have none, so their achieved rate stands in."""
    rate = data["config"].get("rate")
    return rate if rate is not None else data["summary"]["request_throughput"]


def goodput(data, slo_ttft_ms, slo_tpot_ms):
    if slo_ttft_ms is None and slo_tpot_ms is None:
        return data["summary"].get("goodput")
    if "requests" not in data:
        return None
    met = 0
    for r in data["requests"]:
        if r["status"] != "OK" or r["ttft_ms"] is None:
            continue
        if slo_ttft_ms is not None and r["ttft_ms"] > slo_ttft_ms:
            continue
        if slo_tpot_ms is not None and r["tpot_ms"] is not None and r["tpot_ms"] > slo_tpot_ms:
            continue
        met += 1
    duration = data["summary"]["duration_s"]
    return met / duration if duration > 0 else None


def stat(data, metric, key):
    value = data["summary"][metric].get(key)
    return float("nan") if value is None else value


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="JSON files written by tandem bench serve --json")
    parser.add_argument("--out", default="serving.png", help="the PNG to write")
    parser.add_argument("--slo-ttft-ms", type=float, help="recompute goodput with this TTFT SLO")
    parser.add_argument("--slo-tpot-ms", type=float, help="recompute goodput with this TPOT SLO")
    parser.add_argument("--title", default="", help="a title above the panels")
    args = parser.parse_args()

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    except ImportError:
        sys.exit("plot_serving.py needs matplotlib: python3 -m pip install matplotlib")

    series = collections.defaultdict(list)  # label -> [(rate, data)]
    for path in args.files:
        data = load(path)
        series[label_of(data)].append((rate_of(data), data))
    for points in series.values():
        points.sort(key=lambda p: p[0])

    slo_ttft = args.slo_ttft_ms
    slo_tpot = args.slo_tpot_ms
    if slo_ttft is None and slo_tpot is None:
        # The files' own SLOs, named in the title when they all agree.
        slos = {(d["summary"]["slo"]["ttft_ms"], d["summary"]["slo"]["tpot_ms"])
                for points in series.values() for _, d in points}
        shown = slos.pop() if len(slos) == 1 else (None, None)
    else:
        shown = (slo_ttft, slo_tpot)

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    max_rate = 0.0
    print(f"{'label':<16} {'rate':>7} {'ok':>5} {'TTFT p50':>9} {'p99':>9} "
          f"{'ITL p50':>8} {'p99':>8} {'goodput':>8}   (ms, req/s)")
    for i, (label, points) in enumerate(sorted(series.items())):
        color = colors[i % len(colors)]
        rates = [r for r, _ in points]
        max_rate = max(max_rate, max(rates))
        for ax, metric in ((axes[0], "ttft_ms"), (axes[1], "itl_ms")):
            ax.plot(rates, [stat(d, metric, "p50") for _, d in points], "o-", color=color,
                    label=f"{label} p50")
            ax.plot(rates, [stat(d, metric, "p99") for _, d in points], "s--", color=color,
                    label=f"{label} p99")
        goodputs = [goodput(d, slo_ttft, slo_tpot) for _, d in points]
        if any(g is not None for g in goodputs):
            axes[2].plot(rates, [float("nan") if g is None else g for g in goodputs], "o-",
                         color=color, label=label)
        for (rate, d), g in zip(points, goodputs):
            s = d["summary"]
            print(f"{label:<16} {rate:>7.3f} {s['completed']:>5} {stat(d, 'ttft_ms', 'p50'):>9.1f} "
                  f"{stat(d, 'ttft_ms', 'p99'):>9.1f} {stat(d, 'itl_ms', 'p50'):>8.1f} "
                  f"{stat(d, 'itl_ms', 'p99'):>8.1f} "
                  f"{'-' if g is None else format(g, '.3f'):>8}")

    axes[0].set_title("time to first token")
    axes[1].set_title("inter-token latency")
    slo_text = " and ".join(
        f"{name} <= {value:g} ms" for name, value in zip(("TTFT", "TPOT"), shown) if value is not None)
    axes[2].set_title("goodput" + (f" ({slo_text})" if slo_text else " (no SLO given)"))
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    for ax in axes[:2]:
        ax.set_ylabel("ms (log scale)")
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(NullFormatter())
    axes[2].plot([0, max_rate], [0, max_rate], ":", color="gray", label="every request")
    axes[2].set_ylabel("requests/s meeting the SLOs")
    for ax in axes:
        ax.set_xlabel("request rate (requests/s, Poisson)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    def span(config, what):
        lo, hi = config[f"{what}_tokens_min"], config[f"{what}_tokens_max"]
        return f"{lo}" if lo == hi else f"{lo}-{hi}"

    first = next(iter(series.values()))[0][1]["config"]
    workload = f"prompts {span(first, 'prompt')} tokens, outputs {span(first, 'output')} tokens"
    if first.get("shared_prefix_ratio"):
        workload += f", shared prefix {first['shared_prefix_ratio']:g}"
    fig.suptitle(f"{args.title + ': ' if args.title else ''}{workload}")
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
