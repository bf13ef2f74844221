"""tandem_client against a fake router (tests/fake_router.py): no engine, no model.

    clients/python/generate.sh && PYTHONPATH=clients/python/src:clients/python/tests \
      python3 -m unittest discover -s clients/python/tests
"""
import os
import unittest

from fake_router import serve
from tandem_client import TandemClient, TandemError


class TandemClientTest(unittest.TestCase):
    def setUp(self):
        self.server, self.servicer, port = serve(0)
        self.client = TandemClient(f"127.0.0.1:{port}")

    def tearDown(self):
        self.client.close()
        self.server.stop(None)

    def test_generate_streams_deltas_then_final(self):
        stream = self.client.generate(prompt="one two three", max_tokens=8, temperature=0,
                                      seed=7, stop=["x"], request_id="r1")
        self.assertEqual(list(stream), ["one", " two", " three"])
        self.assertEqual(stream.text, "one two three")
        self.assertEqual(stream.token_ids, [0, 1, 2])
        final = stream.final
        self.assertEqual(final.finish_reason, "stop")
        self.assertEqual(final.completion_tokens, 3)
        self.assertEqual(final.prefill_location, "remote")
        self.assertEqual(final.request_id, "r1")
        self.assertAlmostEqual(final.timings.first_token, 0.02)
        self.assertAlmostEqual(final.decode_tokens_per_second, 20.0)
        sent = self.servicer.requests[0]
        self.assertEqual(sent.prompt, "one two three")
        self.assertTrue(sent.sampling.HasField("temperature"))
        self.assertFalse(sent.sampling.HasField("top_p"))  # unset: the router's default
        self.assertEqual(sent.sampling.seed, 7)
        self.assertEqual(list(sent.sampling.stop), ["x"])

    def test_chat_with_system_and_mode(self):
        result = self.client.complete(chat="hello there", system="be brief", max_tokens=1,
                                      mode="collocated")
        self.assertEqual(result.text, "hello")
        self.assertEqual(result.final.finish_reason, "length")
        sent = self.servicer.requests[0]
        self.assertEqual([(m.role, m.content) for m in sent.chat.messages],
                         [("system", "be brief"), ("user", "hello there")])
        self.assertEqual(sent.mode, 2)  # PREFILL_MODE_COLLOCATED

    def test_chat_as_message_list_and_token_ids(self):
        self.client.complete(chat=[{"role": "user", "content": "a"}, ("assistant", "b")])
        self.assertEqual(len(self.servicer.requests[0].chat.messages), 2)
        result = self.client.complete(token_ids=[5, 6])
        self.assertEqual(list(self.servicer.requests[1].token_ids.ids), [5, 6])
        self.assertEqual(result.text, "5 6")

    def test_server_error_is_a_tandem_error(self):
        with self.assertRaises(TandemError) as caught:
            self.client.complete(prompt="x", max_tokens=0)
        self.assertEqual(caught.exception.code, "INVALID_ARGUMENT")

    def test_bad_arguments(self):
        with self.assertRaises(ValueError):
            self.client.generate(prompt="a", chat="b")
        with self.assertRaises(ValueError):
            self.client.generate(prompt="a", mode="sideways")

    def test_health_and_models(self):
        health = self.client.health()
        self.assertTrue(health.serving)
        self.assertEqual(health.mode, "auto")
        self.assertEqual([w.role for w in health.workers], ["prefill", "decode"])
        self.assertTrue(health.workers[1].draining)
        models = self.client.list_models()
        self.assertEqual(models[0].context_length, 8192)

    def test_unreachable_router(self):
        with TandemClient("127.0.0.1:1") as client:
            with self.assertRaises(TandemError) as caught:
                client.health(timeout=5)
        self.assertEqual(caught.exception.code, "UNAVAILABLE")


class ApiKeyTest(unittest.TestCase):
    def setUp(self):
        self.server, _, port = serve(0, api_key="s3cret")
        self.address = f"127.0.0.1:{port}"

    def tearDown(self):
        self.server.stop(None)

    def test_key_is_sent_as_bearer(self):
        with TandemClient(self.address, api_key="s3cret") as client:
            self.assertEqual(client.complete("a b", max_tokens=4).text, "a b")
            self.assertEqual(len(client.list_models()), 1)

    def test_missing_and_wrong_keys_are_unauthenticated(self):
        for key in ("", "wrong"):
            with TandemClient(self.address, api_key=key) as client:
                with self.assertRaises(TandemError) as raised:
                    client.complete("a b", max_tokens=4)
                self.assertEqual(raised.exception.code, "UNAUTHENTICATED")
                client.health()  # Health stays open

    def test_key_from_environment(self):
        os.environ["TANDEM_API_KEY"] = "s3cret"
        try:
            with TandemClient(self.address) as client:
                self.assertEqual(client.complete("a", max_tokens=2).text, "a")
        finally:
            del os.environ["TANDEM_API_KEY"]


if __name__ == "__main__":
    unittest.main()
