"""256 concurrent streaming clients (the official `openai` package, asyncio) hold chat
streams against router + 1 prefill + 1 decode worker for 60 seconds: every stream must
end with a finish reason and usage, and none may fail; neither the router's threads nor
the decode worker's may grow with the streams. Prints what the router carried.

TANDEM_LOAD_CLIENTS (256) and TANDEM_LOAD_SECONDS (60) resize it."""

import asyncio
import os
import random
import threading
import time
import unittest

import openai

try:  # openai 3.x ships its HTTP client as httpx2
    import httpx2 as httpx
except ImportError:
    import httpx

from cluster import Cluster

CLIENTS = int(os.environ.get("TANDEM_LOAD_CLIENTS", "256"))
SECONDS = float(os.environ.get("TANDEM_LOAD_SECONDS", "60"))
TOPICS = ["the sea", "a mountain", "bread", "rain", "a city at night", "music", "a cat",
          "the moon", "autumn", "trains"]


def threads_of(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


class LoadTest(unittest.TestCase):
    def test_concurrent_streams(self):
        with Cluster(prefill=1, decode=1,
                     router_flags=["--max-queue", str(4 * CLIENTS)],
                     decode_flags=["--max-num-seqs", str(CLIENTS), "--kv-cache-mb", "1024"]) as c:
            router_pid, decode_pid = c.pid("router"), c.pid("decode-0")
            peak_threads = [threads_of(router_pid)]
            peak_decode_threads = [threads_of(decode_pid)]
            stop_sampling = threading.Event()

            def sample():
                while not stop_sampling.wait(0.5):
                    peak_threads.append(threads_of(router_pid))
                    peak_decode_threads.append(threads_of(decode_pid))

            sampler = threading.Thread(target=sample)
            sampler.start()
            try:
                stats = asyncio.run(self.run_clients(c))
            except BaseException:
                print(c.tails())
                raise
            finally:
                stop_sampling.set()
                sampler.join()

            print(f"\n{CLIENTS} clients for {SECONDS:.0f} s: {stats['completed']} streams "
                  f"completed, {stats['tokens']} tokens ({stats['tokens'] / stats['elapsed']:.0f}"
                  f" tokens/s), errors {len(stats['errors'])}, router threads at most "
                  f"{max(peak_threads)}, decode worker threads at most {max(peak_decode_threads)}")
            self.assertEqual(stats["errors"], [], c.tails() if stats["errors"] else "")
            # The router is asynchronous: its threads are gRPC's and its own few, however
            # many requests are in flight (a thread per request would be CLIENTS or more).
            # So is the decode worker's token stream (its engine and KV threads are fixed).
            bound = 64 + 2 * (os.cpu_count() or 1)
            self.assertLess(max(peak_threads), bound,
                            "the router's threads grow with the requests in flight")
            self.assertLess(max(peak_decode_threads), bound,
                            "the decode worker's threads grow with its streams")
            self.assertEqual(sorted(stats["per_client"].keys()), list(range(CLIENTS)))
            self.assertTrue(all(n >= 1 for n in stats["per_client"].values()))
            status, health = c.health()
            self.assertEqual(status, 200)

    async def run_clients(self, c):
        limits = httpx.Limits(max_connections=CLIENTS + 16, max_keepalive_connections=CLIENTS)
        http = openai.DefaultAsyncHttpxClient(limits=limits, timeout=httpx.Timeout(300.0))
        client = openai.AsyncOpenAI(base_url=c.base_url, api_key="unused", max_retries=0,
                                    http_client=http)
        model = (await client.models.list()).data[0].id
        stats = {"completed": 0, "tokens": 0, "errors": [], "per_client": {}}
        start = time.monotonic()
        end = start + SECONDS

        async def one_client(index):
            rng = random.Random(index)
            done = 0
            while time.monotonic() < end:
                try:
                    stream = await client.chat.completions.create(
                        model=model,
                        messages=[{"role": "user",
                                   "content": f"Write a short line about {rng.choice(TOPICS)}."}],
                        max_tokens=16, temperature=0.8, seed=rng.randrange(1 << 30),
                        stream=True, stream_options={"include_usage": True})
                    finish, usage, text = None, None, ""
                    async for chunk in stream:
                        if chunk.usage is not None:
                            usage = chunk.usage
                        for choice in chunk.choices:
                            text += choice.delta.content or ""
                            finish = choice.finish_reason or finish
                    if finish not in ("stop", "length") or usage is None:
                        raise AssertionError(f"stream ended without finish/usage: {finish} {usage}")
                    if not 1 <= usage.completion_tokens <= 16:
                        raise AssertionError(f"completion_tokens {usage.completion_tokens}")
                    stats["tokens"] += usage.completion_tokens
                    stats["completed"] += 1
                    done += 1
                except Exception as e:  # every failure is recorded, none ends the run
                    stats["errors"].append(f"client {index}: {type(e).__name__}: {e}")
                    await asyncio.sleep(0.5)
            stats["per_client"][index] = done

        await asyncio.gather(*(one_client(i) for i in range(CLIENTS)))
        stats["elapsed"] = time.monotonic() - start
        await http.aclose()
        return stats


if __name__ == "__main__":
    unittest.main()
