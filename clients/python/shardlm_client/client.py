"""A small synchronous client of the shardlm Generation service (proto/shardlm/v1)."""
import dataclasses
import itertools
import os
import uuid
from typing import Dict, Iterator, List, Optional, Sequence

import grpc

from . import _proto

pb2, pb2_grpc = _proto.load()

FINISH_REASONS = {
    pb2.FINISH_REASON_UNSPECIFIED: None,
    pb2.FINISH_REASON_LENGTH: "length",
    pb2.FINISH_REASON_STOP: "stop",
    pb2.FINISH_REASON_EOS: "eos",
    pb2.FINISH_REASON_CANCELLED: "cancelled",
    pb2.FINISH_REASON_ERROR: "error",
}


class ShardlmError(Exception):
    """A failed RPC: `code` is the grpc.StatusCode, `details` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


@dataclasses.dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    queue_ms: float
    ttft_ms: float
    total_ms: float


@dataclasses.dataclass
class TokenLogprob:
    id: int
    logprob: float
    text: str


@dataclasses.dataclass
class Logprobs:
    chosen: TokenLogprob
    top: List[TokenLogprob]


@dataclasses.dataclass
class Chunk:
    """One streamed message: the ids and text new since the previous one. The last chunk has
    `finish_reason` ("length", "stop", "eos", "cancelled" or "error", with `error`) and `usage`."""
    request_id: str
    token_ids: List[int]
    text: str
    logprobs: List[Logprobs]
    finish_reason: Optional[str] = None
    usage: Optional[Usage] = None
    error: str = ""


def _token_logprob(t) -> TokenLogprob:
    return TokenLogprob(id=t.id, logprob=t.logprob, text=t.text)


def _chunk(m) -> Chunk:
    usage = None
    if m.HasField("usage"):
        u = m.usage
        usage = Usage(u.prompt_tokens, u.completion_tokens, u.queue_ms, u.ttft_ms, u.total_ms)
    return Chunk(
        request_id=m.request_id,
        token_ids=list(m.token_ids),
        text=m.text,
        logprobs=[Logprobs(_token_logprob(lp.chosen), [_token_logprob(t) for t in lp.top])
                  for lp in m.logprobs],
        finish_reason=FINISH_REASONS.get(m.finish_reason, "error"),
        usage=usage,
        error=m.error,
    )


def _chat_messages(chat) -> "pb2.ChatMessages":
    msgs = pb2.ChatMessages()
    for m in chat:
        if isinstance(m, dict):
            msgs.messages.add(role=m["role"], content=m["content"])
        else:  # (role, content)
            role, content = m
            msgs.messages.add(role=role, content=content)
    return msgs


_SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty",
                    "presence_penalty", "frequency_penalty", "seed")
_ids = itertools.count()


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"{what} {path}: cannot read it ({e.strerror})") from None


def read_token_file(path: str) -> str:
    """The bearer token in `path`, less one trailing newline (as shardlm-coordinator reads its
    --auth-token-file)."""
    token = _read(path, "auth_token_file").decode("utf-8")
    if token.endswith("\n"):
        token = token[:-1]
        if token.endswith("\r"):
            token = token[:-1]
    if not token:
        raise ValueError(f"auth_token_file {path}: the file is empty")
    return token


class Client:
    """Client("127.0.0.1:50051"). Methods raise ShardlmError on a failed RPC.

        with Client(addr) as c:
            for chunk in c.generate("Hello", max_new_tokens=16, temperature=0):
                print(chunk.text, end="", flush=True)

    A secured server (README "Security"): `tls_ca` (a PEM file of the CA that signed the server's
    certificate) turns TLS on; `tls_cert` and `tls_key` (PEM files) present a client certificate
    (mTLS; TLS with the system's roots when `tls_ca` is not given); `auth_token` (the token) or
    `auth_token_file` (a file holding it) sends "authorization: Bearer TOKEN" with every call.
    """

    def __init__(self, target: str, timeout: Optional[float] = None,
                 options: Sequence = (), *, tls_ca: Optional[str] = None,
                 tls_cert: Optional[str] = None, tls_key: Optional[str] = None,
                 auth_token: Optional[str] = None, auth_token_file: Optional[str] = None):
        self.target = target
        self.timeout = timeout
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("tls_cert and tls_key: expected both (a client certificate and its "
                             "private key) or neither")
        if auth_token is not None and auth_token_file is not None:
            raise ValueError("expected at most one of auth_token, auth_token_file")
        if auth_token_file is not None:
            auth_token = read_token_file(auth_token_file)
        # Metadata rather than call credentials, which gRPC sends over TLS only: a plaintext
        # loopback server with a token is reachable too.
        self._metadata = (("authorization", f"Bearer {auth_token}"),) if auth_token else None
        channel_options = [
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_reconnect_backoff_ms", 2000),
            *options,
        ]
        if tls_ca is not None or tls_cert is not None:
            creds = grpc.ssl_channel_credentials(
                root_certificates=_read(tls_ca, "tls_ca") if tls_ca is not None else None,
                private_key=_read(tls_key, "tls_key") if tls_key is not None else None,
                certificate_chain=_read(tls_cert, "tls_cert") if tls_cert is not None else None)
            self._channel = grpc.secure_channel(target, creds, options=channel_options)
        else:
            self._channel = grpc.insecure_channel(target, options=channel_options)
        self._stub = pb2_grpc.GenerationStub(self._channel)
        self._prefix = f"py-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def new_request_id(self) -> str:
        return f"{self._prefix}-{next(_ids)}"

    def _call(self, method, request, timeout):
        try:
            return method(request, timeout=timeout if timeout is not None else self.timeout,
                          metadata=self._metadata)
        except grpc.RpcError as e:
            raise ShardlmError(e.code(), e.details()) from None

    def generate(self, prompt: Optional[str] = None, *, token_ids: Optional[Sequence[int]] = None,
                 chat: Optional[Sequence] = None, max_new_tokens: int = 16,
                 stop: Sequence[str] = (), stop_token_ids: Sequence[int] = (),
                 ignore_eos: bool = False, logprobs: int = 0, chat_template: str = "",
                 request_id: Optional[str] = None, timeout: Optional[float] = None,
                 **sampling) -> Iterator[Chunk]:
        """Streams a generation: exactly one of `prompt` (text), `token_ids`, `chat` (a list of
        {"role", "content"} dicts or (role, content) pairs). Sampling keywords: temperature,
        top_k, top_p, min_p, repetition_penalty, presence_penalty, frequency_penalty, seed; unset
        ones take the server's defaults. Stopping iteration early cancels the request."""
        given = sum(x is not None for x in (prompt, token_ids, chat))
        if given != 1:
            raise ValueError(f"expected exactly one of prompt, token_ids, chat; got {given}")
        unknown = set(sampling) - set(_SAMPLING_FIELDS)
        if unknown:
            raise TypeError(f"unknown sampling parameters: {sorted(unknown)}")
        req = pb2.GenerateRequest(
            request_id=request_id or self.new_request_id(), max_new_tokens=max_new_tokens,
            stop=list(stop), stop_token_ids=list(stop_token_ids), ignore_eos=ignore_eos,
            logprobs=logprobs, chat_template=chat_template)
        if prompt is not None:
            req.text = prompt
        elif token_ids is not None:
            req.token_ids.ids.extend(token_ids)
        else:
            req.chat.CopyFrom(_chat_messages(chat))
        for k, v in sampling.items():
            if v is not None:
                setattr(req.sampling, k, v)
        return self._stream(req, timeout)

    def _stream(self, req, timeout) -> Iterator[Chunk]:
        call = self._stub.Generate(req, timeout=timeout if timeout is not None else self.timeout,
                                   metadata=self._metadata)
        try:
            for m in call:
                yield _chunk(m)
        except grpc.RpcError as e:
            raise ShardlmError(e.code(), e.details()) from None
        finally:
            call.cancel()  # a no-op once the stream has ended

    def generate_all(self, *args, **kwargs) -> Chunk:
        """Runs generate() to the end; one Chunk with every id, the whole text, the finish reason
        and usage."""
        out = None
        for c in self.generate(*args, **kwargs):
            if out is None:
                out = c
            else:
                out.token_ids += c.token_ids
                out.text += c.text
                out.logprobs += c.logprobs
                out.finish_reason, out.usage, out.error = c.finish_reason, c.usage, c.error
        return out

    def tokenize(self, text: Optional[str] = None, *, chat: Optional[Sequence] = None,
                 add_special: bool = True, chat_template: str = "",
                 timeout: Optional[float] = None) -> List[int]:
        if (text is None) == (chat is None):
            raise ValueError("expected exactly one of text, chat")
        req = pb2.TokenizeRequest(add_special=add_special, chat_template=chat_template)
        if text is not None:
            req.text = text
        else:
            req.chat.CopyFrom(_chat_messages(chat))
        return list(self._call(self._stub.Tokenize, req, timeout).ids)

    def model_info(self, timeout: Optional[float] = None) -> Dict:
        info = self._call(self._stub.GetModelInfo, pb2.GetModelInfoRequest(), timeout)
        return {f.name: getattr(info, f.name) for f in info.DESCRIPTOR.fields}

    def abort(self, request_id: str, timeout: Optional[float] = None) -> bool:
        """Cancels a running or queued request; False when no live request has that id."""
        return self._call(self._stub.Abort, pb2.AbortRequest(request_id=request_id), timeout).found

    def wait_ready(self, timeout: float = 120.0, poll: float = 0.25) -> Dict:
        """Polls model_info() until every worker rank is attached and loaded; returns it. Raises
        TimeoutError (with the last state or error) after `timeout` seconds."""
        import time
        deadline = time.monotonic() + timeout
        last = None
        while True:
            try:
                info = self.model_info(timeout=5)
                if info["workers_expected"] > 0 and \
                        info["workers_attached"] == info["workers_expected"]:
                    return info
                last = f"{info['workers_attached']} of {info['workers_expected']} ranks attached"
            except ShardlmError as e:
                last = str(e)
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.target} not ready after {timeout} s: {last}")
            time.sleep(poll)
