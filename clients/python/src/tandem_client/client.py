"""A thin wrapper over tandem's public gRPC API (tandem.v1.Generation).

    client = TandemClient("127.0.0.1:50051")
    stream = client.generate(chat="What is the capital of France?", max_tokens=64, temperature=0)
    for text in stream:          # text deltas, as the router sends them
        print(text, end="", flush=True)
    print(stream.final.finish_reason, stream.final.timings.first_token)
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping, Optional, Sequence, Tuple, Union

import grpc

from tandem_client._proto.tandem.v1 import generation_pb2 as pb
from tandem_client._proto.tandem.v1 import generation_pb2_grpc as pb_grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"
API_KEY_ENV = "TANDEM_API_KEY"

_MODES = {
    None: pb.PREFILL_MODE_UNSPECIFIED,
    "disaggregated": pb.PREFILL_MODE_DISAGGREGATED,
    "collocated": pb.PREFILL_MODE_COLLOCATED,
    "auto": pb.PREFILL_MODE_AUTO,
}
_FINISH_REASONS = {
    pb.FINISH_REASON_STOP: "stop",
    pb.FINISH_REASON_LENGTH: "length",
    pb.FINISH_REASON_CONTEXT: "context",
    pb.FINISH_REASON_ABORTED: "aborted",
}
_PREFILL_LOCATIONS = {
    pb.PREFILL_LOCATION_REMOTE: "remote",
    pb.PREFILL_LOCATION_LOCAL: "local",
}

# A chat: a list of {"role": ..., "content": ...} mappings or (role, content) pairs.
ChatInput = Sequence[Union[Mapping[str, str], Tuple[str, str]]]


class TandemError(Exception):
    """A failed call: `code` is the gRPC status code name (e.g. "INVALID_ARGUMENT")."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> "TandemError":
        code = error.code() if hasattr(error, "code") else None
        details = error.details() if hasattr(error, "details") else str(error)
        return cls(code.name if code is not None else "UNKNOWN", details or "")


@dataclass(frozen=True)
class Timings:
    """Seconds from the router receiving the request."""

    queued: float = 0.0
    prefill: float = 0.0
    kv_transfer: float = 0.0
    first_token: float = 0.0
    decode: float = 0.0
    total: float = 0.0


@dataclass(frozen=True)
class Final:
    """The final message of a generation."""

    finish_reason: str  # stop | length | context | aborted | unspecified
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int
    timings: Timings
    prefill_worker: str
    decode_worker: str
    prefill_location: str  # remote | local | unspecified
    request_id: str
    prefill_retries: int

    @property
    def decode_tokens_per_second(self) -> float:
        """Tokens after the first over the time after the first token."""
        if self.completion_tokens <= 1 or self.timings.decode <= 0:
            return 0.0
        return (self.completion_tokens - 1) / self.timings.decode

    @classmethod
    def from_proto(cls, final: pb.GenerateFinal) -> "Final":
        t = final.timings
        return cls(
            finish_reason=_FINISH_REASONS.get(final.finish_reason, "unspecified"),
            prompt_tokens=final.prompt_tokens,
            completion_tokens=final.completion_tokens,
            cached_prompt_tokens=final.cached_prompt_tokens,
            timings=Timings(t.queued, t.prefill, t.kv_transfer, t.first_token, t.decode, t.total),
            prefill_worker=final.prefill_worker,
            decode_worker=final.decode_worker,
            prefill_location=_PREFILL_LOCATIONS.get(final.prefill_location, "unspecified"),
            request_id=final.request_id,
            prefill_retries=final.prefill_retries,
        )


@dataclass(frozen=True)
class WorkerStatus:
    id: str
    role: str  # prefill | decode
    address: str
    free_kv_blocks: int
    total_kv_blocks: int
    running_sequences: int
    queued_prompt_tokens: int
    draining: bool


@dataclass(frozen=True)
class Health:
    serving: bool
    mode: str
    prefill_workers: int  # registered and not draining
    decode_workers: int
    workers: Tuple[WorkerStatus, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class ModelInfo:
    id: str
    context_length: int
    fingerprint: str


class Generation:
    """One streaming Generate call. Iterate it for the text deltas (str); once the iteration
    ends, `final` holds the final message, `text` the whole text and `token_ids` every
    generated token. Failures raise TandemError from the iteration."""

    def __init__(self, call):
        self._call = call
        self.final: Optional[Final] = None
        self.token_ids: list = []
        self._pieces: list = []

    @property
    def text(self) -> str:
        return "".join(self._pieces)

    def __iter__(self) -> Iterator[str]:
        try:
            for response in self._call:
                kind = response.WhichOneof("kind")
                if kind == "delta":
                    self.token_ids.extend(response.delta.token_ids)
                    self._pieces.append(response.delta.text)
                    if response.delta.text:
                        yield response.delta.text
                elif kind == "final":
                    self.final = Final.from_proto(response.final)
        except grpc.RpcError as error:
            raise TandemError.from_rpc_error(error) from None
        if self.final is None:
            raise TandemError("INTERNAL", "the router ended the stream without a final message")

    def cancel(self) -> None:
        """Cancels the call; the router cancels the request everywhere."""
        self._call.cancel()

    def wait(self) -> "Generation":
        """Consumes the rest of the stream; returns self with `text` and `final` set."""
        for _ in self:
            pass
        return self


def _chat_messages(chat: Union[str, ChatInput], system: Optional[str]) -> pb.ChatMessages:
    messages = pb.ChatMessages()
    if system is not None:
        messages.messages.add(role="system", content=system)
    if isinstance(chat, str):
        messages.messages.add(role="user", content=chat)
        return messages
    for message in chat:
        if isinstance(message, Mapping):
            role, content = message["role"], message["content"]
        else:
            role, content = message
        messages.messages.add(role=role, content=content)
    return messages


class TandemClient:
    """A client of one tandem router. Thread-safe; close() (or `with`) releases the channel."""

    def __init__(self, address: str = DEFAULT_ADDRESS, *, timeout: Optional[float] = None,
                 channel: Optional[grpc.Channel] = None, api_key: Optional[str] = None,
                 root_certificates: Optional[bytes] = None):
        """`timeout`: default deadline in seconds for generate (None: none); health and
        list_models default to 10 s. `api_key`: sent as "authorization: Bearer <key>" (None:
        $TANDEM_API_KEY, if set). `root_certificates`: PEM of the CA that signed the router's
        certificate (the router's --tls-cert): connect with TLS."""
        self.address = address
        self.timeout = timeout
        if api_key is None:
            api_key = os.environ.get(API_KEY_ENV, "").strip()
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else None
        if channel is not None:
            self._channel = channel
        elif root_certificates is not None:
            self._channel = grpc.secure_channel(
                address, grpc.ssl_channel_credentials(root_certificates=root_certificates))
        else:
            self._channel = grpc.insecure_channel(address)
        self._stub = pb_grpc.GenerationStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "TandemClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def generate(
        self,
        prompt: Optional[str] = None,
        *,
        chat: Optional[Union[str, ChatInput]] = None,
        system: Optional[str] = None,
        token_ids: Optional[Iterable[int]] = None,
        max_tokens: int = 128,
        temperature: Optional[float] = None,
        top_p: Optional[float] = None,
        top_k: Optional[int] = None,
        seed: Optional[int] = None,
        stop: Sequence[str] = (),
        ignore_eos: bool = False,
        mode: Optional[str] = None,
        request_id: str = "",
        model: str = "",
        timeout: Optional[float] = None,
    ) -> Generation:
        """Starts a generation; give exactly one of `prompt` (raw text), `chat` (a user message,
        or a list of messages, rendered with the model's chat template) and `token_ids`.
        Sampling fields left None take the router's defaults. `mode`: disaggregated,
        collocated, auto or None (the router's mode)."""
        if sum(x is not None for x in (prompt, chat, token_ids)) != 1:
            raise ValueError("give exactly one of prompt, chat and token_ids")
        if system is not None and chat is None:
            raise ValueError("system goes with chat")
        if mode not in _MODES:
            raise ValueError(f"mode {mode!r} is not disaggregated, collocated, auto or None")
        request = pb.GenerateRequest(model=model, request_id=request_id, mode=_MODES[mode])
        if prompt is not None:
            request.prompt = prompt
        elif chat is not None:
            request.chat.CopyFrom(_chat_messages(chat, system))
        else:
            request.token_ids.ids.extend(token_ids)
        sampling = request.sampling
        sampling.max_tokens = max_tokens
        if temperature is not None:
            sampling.temperature = temperature
        if top_p is not None:
            sampling.top_p = top_p
        if top_k is not None:
            sampling.top_k = top_k
        if seed is not None:
            sampling.seed = seed
        sampling.stop.extend(stop)
        sampling.ignore_eos = ignore_eos
        deadline = timeout if timeout is not None else self.timeout
        return Generation(self._stub.Generate(request, timeout=deadline, metadata=self._metadata))

    def complete(self, prompt: Optional[str] = None, **kwargs) -> Generation:
        """generate() without streaming: returns the finished Generation (`text`, `final`)."""
        return self.generate(prompt, **kwargs).wait()

    def health(self, timeout: float = 10.0) -> Health:
        try:
            h = self._stub.Health(pb.HealthRequest(), timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise TandemError.from_rpc_error(error) from None
        workers = tuple(
            WorkerStatus(w.id, w.role, w.address, w.free_kv_blocks, w.total_kv_blocks,
                         w.running_sequences, w.queued_prompt_tokens, w.draining)
            for w in h.workers)
        return Health(h.serving, h.mode, h.prefill_workers, h.decode_workers, workers)

    def list_models(self, timeout: float = 10.0) -> list:
        try:
            response = self._stub.ListModels(pb.ListModelsRequest(), timeout=timeout,
                                             metadata=self._metadata)
        except grpc.RpcError as error:
            raise TandemError.from_rpc_error(error) from None
        return [ModelInfo(m.id, m.context_length, m.fingerprint) for m in response.models]
