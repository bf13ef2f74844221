"""A stand-in for tandem-router's public Generation service, for testing clients without the
engine: Generate streams the prompt (or the last chat message) back word by word.

    python3 clients/python/tests/fake_router.py --port 50999   # serves until killed
"""
import argparse
import threading
import time
from concurrent import futures

import grpc

from tandem_client._proto.tandem.v1 import generation_pb2 as pb
from tandem_client._proto.tandem.v1 import generation_pb2_grpc as pb_grpc


class FakeGeneration(pb_grpc.GenerationServicer):
    def __init__(self, delay_s: float = 0.0, api_key: str = ""):
        self.delay_s = delay_s
        self.api_key = api_key  # non-empty: Generate and ListModels require it, as the router does
        self.requests = []
        self.cancelled = threading.Event()

    def _check_key(self, context):
        if not self.api_key:
            return
        metadata = dict(context.invocation_metadata())
        if "authorization" not in metadata and "x-api-key" not in metadata:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing API key")
        if (metadata.get("authorization") != f"Bearer {self.api_key}"
                and metadata.get("x-api-key") != self.api_key):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid API key")

    def Generate(self, request, context):
        self._check_key(context)
        self.requests.append(request)
        if request.sampling.max_tokens <= 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "sampling.max_tokens must be > 0")
        kind = request.WhichOneof("input")
        if kind == "prompt":
            text = request.prompt
        elif kind == "chat":
            text = request.chat.messages[-1].content
        else:
            text = " ".join(str(i) for i in request.token_ids.ids)
        words = text.split(" ")[: request.sampling.max_tokens]
        context.add_callback(self.cancelled.set)
        for i, word in enumerate(words):
            if not context.is_active():
                return
            time.sleep(self.delay_s)
            yield pb.GenerateResponse(
                delta=pb.TextDelta(text=(" " if i else "") + word, token_ids=[i]))
        yield pb.GenerateResponse(final=pb.GenerateFinal(
            finish_reason=(pb.FINISH_REASON_LENGTH
                           if len(words) == request.sampling.max_tokens else pb.FINISH_REASON_STOP),
            prompt_tokens=len(text.split(" ")),
            completion_tokens=len(words),
            timings=pb.Timings(queued=0.001, prefill=0.01, kv_transfer=0.002, first_token=0.02,
                               decode=0.1, total=0.12),
            prefill_worker="prefill-0",
            decode_worker="decode-0",
            prefill_location=pb.PREFILL_LOCATION_REMOTE,
            request_id=request.request_id))

    def ListModels(self, request, context):
        self._check_key(context)
        return pb.ListModelsResponse(models=[
            pb.ModelInfo(id="SmolLM2-135M-Instruct", context_length=8192, fingerprint="abc")])

    def Health(self, request, context):
        return pb.HealthResponse(serving=True, prefill_workers=1, decode_workers=1, mode="auto",
                                 workers=[
                                     pb.WorkerStatus(id="prefill-0", role="prefill",
                                                     address="127.0.0.1:1", free_kv_blocks=10,
                                                     total_kv_blocks=20),
                                     pb.WorkerStatus(id="decode-0", role="decode",
                                                     address="127.0.0.1:2", free_kv_blocks=5,
                                                     total_kv_blocks=20, running_sequences=1,
                                                     draining=True),
                                 ])


def serve(port: int = 0, delay_s: float = 0.0, api_key: str = ""):
    """Starts a fake router; returns (server, servicer, port)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = FakeGeneration(delay_s, api_key)
    pb_grpc.add_GenerationServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, servicer, port


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=50999)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each delta")
    args = parser.parse_args()
    server, _, port = serve(args.port, args.delay)
    print(f"fake router on 127.0.0.1:{port}", flush=True)
    server.wait_for_termination()
