#!/usr/bin/env python3
"""Streams one answer from a tandem router, then prints the final message's numbers.

    python3 clients/python/example.py "What is the capital of France?"
    python3 clients/python/example.py --router 127.0.0.1:50051 --health
"""
import argparse
import sys

from tandem_client import TandemClient, TandemError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("message", nargs="?", default="What is the capital of France?")
    parser.add_argument("--router", default="127.0.0.1:50051")
    parser.add_argument("--system", default=None)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--mode", choices=["disaggregated", "collocated", "auto"], default=None)
    parser.add_argument("--health", action="store_true", help="print the router's workers")
    args = parser.parse_args()

    stream = None
    with TandemClient(args.router) as client:
        try:
            if args.health:
                health = client.health()
                print(f"serving={health.serving} mode={health.mode} "
                      f"prefill={health.prefill_workers} decode={health.decode_workers}")
                for w in health.workers:
                    print(f"  {w.role:8} {w.id:24} {w.address:22} "
                          f"free blocks {w.free_kv_blocks}/{w.total_kv_blocks}"
                          f"{' draining' if w.draining else ''}")
                for m in client.list_models():
                    print(f"model {m.id} (context {m.context_length})")
                return 0
            stream = client.generate(chat=args.message, system=args.system,
                                     max_tokens=args.max_tokens, temperature=args.temperature,
                                     mode=args.mode)
            for text in stream:
                print(text, end="", flush=True)
            print()
        except TandemError as error:
            print(f"example.py: {error}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            if stream is not None:
                stream.cancel()  # the router cancels the request on the workers too
            return 130
    f = stream.final
    t = f.timings
    print(f"finish {f.finish_reason}: prompt {f.prompt_tokens}, completion {f.completion_tokens}, "
          f"cached {f.cached_prompt_tokens} tokens | first token {t.first_token * 1e3:.1f} ms, "
          f"total {t.total * 1e3:.1f} ms, {f.decode_tokens_per_second:.1f} tokens/s | "
          f"prefill {f.prefill_location} on {f.prefill_worker or '-'}, decode on "
          f"{f.decode_worker}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
