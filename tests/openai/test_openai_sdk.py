"""The official `openai` Python package against tandem's HTTP API (router + 1 prefill + 1
decode worker on loopback): completions, chat, streaming with usage, models, every error
path, and a disconnect that cancels the request on the workers."""

import http.client
import json
import os
import socket
import subprocess
import time
import unittest

import openai

from cluster import Cluster, bin_dir

CHAT_PROMPTS = [
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "List three colors.",
]
MAX_TOKENS = 24


def reference(prompt):
    """The single-process engine's greedy chat answer (`tandem generate`)."""
    out = subprocess.run(
        [os.path.join(bin_dir(), "tandem"), "generate", "--chat", "--prompt", prompt,
         "--temperature", "0", "--max-tokens", str(MAX_TOKENS), "--threads", "1"],
        check=True, capture_output=True)
    text = out.stdout.decode("utf-8")
    return text[:-1] if text.endswith("\n") else text


def raw(cluster, method, path, body=None, headers=None):
    """One plain HTTP exchange: (status, headers dict, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", cluster.http_port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


class OpenAiSdkTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = Cluster(prefill=1, decode=1).__enter__()
        cls.client = openai.OpenAI(base_url=cls.cluster.base_url, api_key="unused",
                                   max_retries=0, timeout=120)
        cls.model = cls.client.models.list().data[0].id

    @classmethod
    def tearDownClass(cls):
        cls.cluster.__exit__(None, None, None)

    def setUp(self):
        self.addCleanup(self._print_logs_on_failure)

    def _print_logs_on_failure(self):
        outcome = getattr(self, "_outcome", None)
        result = getattr(outcome, "result", None)
        if result is not None and (result.errors or result.failures):
            print(self.cluster.tails())

    def test_models(self):
        models = self.client.models.list()
        self.assertEqual(len(models.data), 1)
        self.assertEqual(models.data[0].owned_by, "tandem")
        self.assertIn("SmolLM2", self.model)
        self.assertEqual(self.client.models.retrieve(self.model).id, self.model)

    def test_chat_equals_the_single_process_engine(self):
        for prompt in CHAT_PROMPTS:
            with self.subTest(prompt=prompt):
                r = self.client.chat.completions.create(
                    model=self.model, messages=[{"role": "user", "content": prompt}],
                    temperature=0, max_tokens=MAX_TOKENS)
                self.assertEqual(r.object, "chat.completion")
                self.assertTrue(r.id.startswith("chatcmpl-"))
                self.assertEqual(r.model, self.model)
                choice = r.choices[0]
                self.assertEqual(choice.message.role, "assistant")
                self.assertEqual(choice.message.content, reference(prompt))
                self.assertIn(choice.finish_reason, ("stop", "length"))
                self.assertGreater(r.usage.prompt_tokens, 0)
                self.assertGreater(r.usage.completion_tokens, 0)
                self.assertLessEqual(r.usage.completion_tokens, MAX_TOKENS)
                self.assertEqual(r.usage.total_tokens,
                                 r.usage.prompt_tokens + r.usage.completion_tokens)

    def test_streamed_chat_equals_whole_chat(self):
        prompt = CHAT_PROMPTS[1]
        whole = self.client.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": prompt}],
            temperature=0, max_tokens=MAX_TOKENS)
        stream = self.client.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": prompt}], temperature=0,
            max_tokens=MAX_TOKENS, stream=True, stream_options={"include_usage": True})
        text, finish, usage, roles, chunks = "", None, None, [], 0
        for chunk in stream:
            chunks += 1
            self.assertEqual(chunk.object, "chat.completion.chunk")
            if chunk.usage is not None:
                self.assertEqual(chunk.choices, [])
                usage = chunk.usage
                continue
            delta = chunk.choices[0].delta
            if delta.role:
                roles.append(delta.role)
            text += delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        self.assertEqual(roles, ["assistant"])
        self.assertEqual(text, whole.choices[0].message.content)
        self.assertEqual(finish, whole.choices[0].finish_reason)
        self.assertIsNotNone(usage, "include_usage asked for a usage chunk")
        self.assertEqual(usage.completion_tokens, whole.usage.completion_tokens)
        self.assertEqual(usage.prompt_tokens, whole.usage.prompt_tokens)
        self.assertGreater(chunks, 3)

    def test_stream_without_usage_has_none(self):
        stream = self.client.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
            stream=True)
        self.assertTrue(all(c.usage is None for c in stream))

    def test_completion(self):
        r = self.client.completions.create(model=self.model, prompt="The sky is",
                                           temperature=0, max_tokens=8)
        self.assertEqual(r.object, "text_completion")
        self.assertTrue(r.choices[0].text)
        self.assertEqual(r.usage.completion_tokens, 8)
        self.assertEqual(r.choices[0].finish_reason, "length")
        again = self.client.completions.create(model=self.model, prompt="The sky is",
                                               temperature=0, max_tokens=8)
        self.assertEqual(again.choices[0].text, r.choices[0].text)

        streamed = "".join(c.choices[0].text for c in self.client.completions.create(
            model=self.model, prompt="The sky is", temperature=0, max_tokens=8, stream=True)
            if c.choices)
        self.assertEqual(streamed, r.choices[0].text)

    def test_completion_defaults_to_16_tokens_and_honours_seed_and_stop(self):
        r = self.client.completions.create(model=self.model, prompt="Once upon a time",
                                           extra_body={"ignore_eos": True})
        self.assertEqual(r.usage.completion_tokens, 16)
        a = self.client.completions.create(model=self.model, prompt="Once upon a time",
                                           temperature=1.0, seed=7, max_tokens=12)
        b = self.client.completions.create(model=self.model, prompt="Once upon a time",
                                           temperature=1.0, seed=7, max_tokens=12)
        self.assertEqual(a.choices[0].text, b.choices[0].text)
        greedy = self.client.completions.create(model=self.model, prompt="1, 2, 3, 4,",
                                                temperature=0, max_tokens=12)
        text = greedy.choices[0].text
        self.assertGreater(len(text.strip()), 1)
        stop = text.strip()[:1]
        stopped = self.client.completions.create(model=self.model, prompt="1, 2, 3, 4,",
                                                 temperature=0, max_tokens=12, stop=[stop])
        self.assertEqual(stopped.choices[0].finish_reason, "stop")
        self.assertEqual(stopped.choices[0].text, text[:text.index(stop)])

    def test_max_completion_tokens(self):
        r = self.client.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": "Count to fifty."}],
            max_completion_tokens=5, extra_body={"ignore_eos": True})
        self.assertEqual(r.usage.completion_tokens, 5)
        self.assertEqual(r.choices[0].finish_reason, "length")

    def test_bad_requests_are_400_naming_the_param(self):
        cases = [
            (dict(temperature=-1), "temperature"),
            (dict(top_p=0), "top_p"),
            (dict(max_tokens=0), "max_tokens"),
            (dict(max_tokens=10**6), "max_tokens"),
            (dict(n=2), "n"),
            (dict(logprobs=True), "logprobs"),
            (dict(presence_penalty=1.0), "presence_penalty"),
        ]
        for kwargs, param in cases:
            with self.subTest(param=param):
                with self.assertRaises(openai.BadRequestError) as cm:
                    self.client.chat.completions.create(
                        model=self.model, messages=[{"role": "user", "content": "x"}], **kwargs)
                self.assertEqual(cm.exception.status_code, 400)
                self.assertEqual(cm.exception.body["type"], "invalid_request_error")
                self.assertEqual(cm.exception.body["param"], param)
        with self.assertRaises(openai.BadRequestError):
            self.client.chat.completions.create(
                model=self.model, messages=[{"role": "tool", "content": "x"}])
        with self.assertRaises(openai.BadRequestError) as cm:
            self.client.completions.create(model=self.model, prompt="x " * 9000, max_tokens=4)
        self.assertEqual(cm.exception.body["param"], "prompt")

    def test_unknown_model_is_404(self):
        with self.assertRaises(openai.NotFoundError) as cm:
            self.client.chat.completions.create(
                model="gpt-17", messages=[{"role": "user", "content": "x"}])
        self.assertEqual(cm.exception.body["code"], "model_not_found")
        with self.assertRaises(openai.NotFoundError):
            self.client.models.retrieve("gpt-17")

    def test_plain_http_errors(self):
        status, headers, body = raw(self.cluster, "POST", "/v1/chat/completions", b"{not json",
                                    {"Content-Type": "application/json"})
        self.assertEqual(status, 400)
        self.assertEqual(headers["content-type"], "application/json")
        self.assertEqual(json.loads(body)["error"]["type"], "invalid_request_error")

        status, _, body = raw(self.cluster, "POST", "/v1/completions", b"[1]")
        self.assertEqual(status, 400)
        status, _, body = raw(self.cluster, "GET", "/v1/nothing")
        self.assertEqual(status, 404)
        self.assertIn("error", json.loads(body))
        status, headers, _ = raw(self.cluster, "GET", "/v1/chat/completions")
        self.assertEqual(status, 405)
        self.assertEqual(headers["allow"], "POST")
        status, _, _ = raw(self.cluster, "DELETE", "/v1/models")
        self.assertEqual(status, 405)
        # Bodies and heads beyond the server's bounds (16 MiB, 64 KiB). The body's size is
        # refused from its Content-Length, before any of it is read (a client still sending
        # a large body may see the connection close under it).
        with socket.create_connection(("127.0.0.1", self.cluster.http_port), timeout=10) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Length: %d\r\n\r\n{" % (17 << 20))
            reply = b""
            while b"}}" not in reply:
                piece = s.recv(4096)
                if not piece:
                    break
                reply += piece
        self.assertTrue(reply.startswith(b"HTTP/1.1 413"), reply[:40])
        self.assertIn(b'"error"', reply)
        status, _, _ = raw(self.cluster, "GET", "/v1/models", headers={"X-Big": "y" * (70 << 10)})
        self.assertEqual(status, 431)
        # A request line no HTTP parser accepts.
        with socket.create_connection(("127.0.0.1", self.cluster.http_port), timeout=10) as s:
            s.sendall(b"GARBAGE\r\n\r\n")
            reply = s.recv(4096)
        self.assertTrue(reply.startswith(b"HTTP/1.1 400"), reply[:40])

    def test_health_and_metrics(self):
        status, body = self.cluster.health()
        self.assertEqual(status, 200)
        self.assertEqual(body["status"], "ok")
        self.assertEqual(body["decode_workers"], 1)
        status, headers, text = raw(self.cluster, "GET", "/metrics")
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("text/plain"))
        self.assertIn(b"tandem:", text)

    def decode_load(self):
        _, health = self.cluster.health()
        return [w for w in health.get("workers", []) if w["role"] == "decode"]

    def test_disconnect_cancels_the_request(self):
        time.sleep(1.0)  # two heartbeats: the load reflects the earlier tests' ends
        free_before = self.decode_load()[0]["free_kv_blocks"]
        conn = http.client.HTTPConnection("127.0.0.1", self.cluster.http_port, timeout=60)
        body = json.dumps({"model": self.model, "prompt": "Tell me a long story.",
                           "max_tokens": 3000, "stream": True, "ignore_eos": True})
        conn.request("POST", "/v1/completions", body=body,
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        self.assertEqual(r.status, 200)
        self.assertTrue(r.getheader("content-type").startswith("text/event-stream"))
        first = r.readline()
        self.assertTrue(first.startswith(b"data: "), first)
        conn.sock.close()  # leave mid-stream
        conn.close()
        # The decode worker frees the sequence and its blocks (heartbeats every 0.5 s).
        deadline = time.monotonic() + 20
        decode = []
        while time.monotonic() < deadline:
            decode = self.decode_load()
            if (decode and decode[0]["running_sequences"] == 0
                    and decode[0]["free_kv_blocks"] == free_before):
                break
            time.sleep(0.25)
        else:
            self.fail(f"the decode worker still holds the request: {decode}")


if __name__ == "__main__":
    unittest.main()
