"""Starts a real tandem deployment on loopback for the OpenAI-API tests: one router (gRPC
and HTTP on free ports) and prefill/decode workers, from the binaries in TANDEM_BIN_DIR.

    with Cluster(prefill=1, decode=1) as c:
        client = openai.OpenAI(base_url=c.base_url, api_key="unused")
"""

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bin_dir():
    d = os.environ.get("TANDEM_BIN_DIR")
    if not d:
        here = os.path.dirname(os.path.abspath(__file__))
        d = os.path.join(here, "..", "..", "build", "bin")
    return os.path.abspath(d)


class Cluster:
    """A router plus workers; stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, prefill=1, decode=1, mode="disaggregated", router_flags=(),
                 worker_flags=(), decode_flags=(), threads=1, start_timeout=120,
                 scheme="http", health_context=None):
        self.prefill = prefill
        self.decode = decode
        self.mode = mode
        self.router_flags = list(router_flags)
        self.worker_flags = list(worker_flags)
        self.decode_flags = list(decode_flags)
        self.threads = threads
        self.start_timeout = start_timeout
        self.procs = []  # (name, Popen, log path)
        self.logs = tempfile.mkdtemp(prefix="tandem-openai-")
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.base_url = f"{scheme}://127.0.0.1:{self.http_port}/v1"
        self.root_url = f"{scheme}://127.0.0.1:{self.http_port}"
        self.health_context = health_context  # an ssl.SSLContext for https

    def _spawn(self, name, argv):
        log_path = os.path.join(self.logs, name + ".log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append((name, proc, log_path))
        return proc

    def __enter__(self):
        b = bin_dir()
        self._spawn("router", [os.path.join(b, "tandem-router"), "--host", "127.0.0.1",
                               "--port", str(self.grpc_port), "--http-port",
                               str(self.http_port), "--mode", self.mode] + self.router_flags)
        router = f"127.0.0.1:{self.grpc_port}"
        common = ["--router", router, "--host", "127.0.0.1", "--port", "0", "--threads",
                  str(self.threads)] + self.worker_flags
        for i in range(self.prefill):
            self._spawn(f"prefill-{i}", [os.path.join(b, "tandem-prefill")] + common)
        for i in range(self.decode):
            self._spawn(f"decode-{i}",
                        [os.path.join(b, "tandem-decode")] + common + self.decode_flags)
        try:
            self.wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def health(self):
        """GET /health as (status, body dict); (0, {}) while the router is not up."""
        try:
            with urllib.request.urlopen(self.root_url + "/health", timeout=5,
                                        context=self.health_context) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")
        except (urllib.error.URLError, ConnectionError, OSError):
            return 0, {}

    def wait_ready(self):
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            for name, proc, _ in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}\n" + self.tails())
            status, body = self.health()
            if (status == 200 and body.get("prefill_workers", 0) >= self.prefill
                    and body.get("decode_workers", 0) >= self.decode):
                return
            time.sleep(0.2)
        raise TimeoutError("the cluster did not become ready\n" + self.tails())

    def tails(self, lines=30):
        out = []
        for name, _, path in self.procs:
            try:
                with open(path, "rb") as f:
                    text = f.read().decode("utf-8", "replace").splitlines()[-lines:]
            except OSError:
                text = []
            out.append(f"--- {name} ({path}) ---\n" + "\n".join(text))
        return "\n".join(out)

    def pid(self, name):
        for n, proc, _ in self.procs:
            if n == name:
                return proc.pid
        raise KeyError(name)

    def __exit__(self, *exc):
        # Workers first, so none re-registers with a router that is going away.
        for name, proc, _ in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for name, proc, _ in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return False
