"""The HTTP API with API keys and TLS, the router and workers speaking mutual TLS: the
official `openai` package over HTTPS is served with the right key and refused (401) with
a wrong or missing one; /health and /metrics stay open; plaintext HTTP to the TLS port
gets no answer."""

import http.client
import json
import ssl
import subprocess
import tempfile
import unittest

import openai

from cluster import Cluster

KEY = "sk-tandem-test-0123456789"


def make_certs(d):
    """A CA and one certificate (server and client use) for 127.0.0.1, with openssl."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-days", "2", "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem", "-subj", "/CN=test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{d}/node.key", "-out", f"{d}/node.csr", "-subj", "/CN=tandem-node")
    with open(f"{d}/node.ext", "w") as f:
        f.write("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=serverAuth,clientAuth\n"
                "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", f"{d}/node.csr", "-CA", f"{d}/ca.pem", "-CAkey", f"{d}/ca.key",
        "-CAcreateserial", "-days", "2", "-out", f"{d}/node.pem", "-extfile", f"{d}/node.ext")


class SecurityTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="tandem-openai-tls-")
        make_certs(cls.dir)
        d = cls.dir
        tls = ["--tls-cert", f"{d}/node.pem", "--tls-key", f"{d}/node.key", "--tls-ca",
               f"{d}/ca.pem"]
        cls.cluster = Cluster(prefill=1, decode=1, router_flags=["--api-key", KEY] + tls,
                              worker_flags=tls, scheme="https",
                              health_context=ssl.create_default_context(cafile=f"{d}/ca.pem"))
        cls.cluster.__enter__()
        cls.http = openai.DefaultHttpxClient(verify=ssl.create_default_context(
            cafile=f"{d}/ca.pem"))

    @classmethod
    def tearDownClass(cls):
        cls.http.close()
        cls.cluster.__exit__(None, None, None)

    def client(self, key):
        return openai.OpenAI(base_url=self.cluster.base_url, api_key=key, max_retries=0,
                             http_client=self.http, timeout=60)

    def test_the_right_key_is_served_over_https(self):
        r = self.client(KEY).chat.completions.create(
            messages=[{"role": "user", "content": "Say hi."}], model="", temperature=0,
            max_tokens=4)
        self.assertGreater(r.usage.completion_tokens, 0)
        self.assertEqual(len(self.client(KEY).models.list().data), 1)

    def test_a_wrong_key_is_401(self):
        with self.assertRaises(openai.AuthenticationError) as cm:
            self.client("wrong").chat.completions.create(
                messages=[{"role": "user", "content": "x"}], model="", max_tokens=2)
        self.assertEqual(cm.exception.status_code, 401)
        self.assertEqual(cm.exception.body["code"], "invalid_api_key")
        self.assertNotIn(KEY, str(cm.exception.body))
        with self.assertRaises(openai.AuthenticationError):
            self.client("wrong").models.list()

    def test_a_missing_key_is_401(self):
        # The SDK always sends a key; a plain request sends none.
        context = ssl.create_default_context(cafile=f"{self.dir}/ca.pem")
        conn = http.client.HTTPSConnection("127.0.0.1", self.cluster.http_port, timeout=10,
                                           context=context)
        conn.request("POST", "/v1/completions", body=json.dumps({"prompt": "x"}),
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        body = json.loads(r.read())
        conn.close()
        self.assertEqual(r.status, 401)
        self.assertEqual(r.getheader("www-authenticate"), "Bearer")
        self.assertEqual(body["error"]["type"], "authentication_error")
        self.assertIn("missing API key", body["error"]["message"])

    def test_health_and_metrics_stay_open(self):
        status, body = self.cluster.health()
        self.assertEqual(status, 200)
        self.assertEqual(body["status"], "ok")
        context = ssl.create_default_context(cafile=f"{self.dir}/ca.pem")
        conn = http.client.HTTPSConnection("127.0.0.1", self.cluster.http_port, timeout=10,
                                           context=context)
        conn.request("GET", "/metrics")
        self.assertEqual(conn.getresponse().status, 200)
        conn.close()

    def test_plaintext_to_the_tls_port_gets_no_answer(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.cluster.http_port, timeout=10)
        with self.assertRaises((http.client.HTTPException, ConnectionError, OSError)):
            conn.request("GET", "/health")
            conn.getresponse()
        conn.close()


if __name__ == "__main__":
    unittest.main()
