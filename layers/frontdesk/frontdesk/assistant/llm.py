"""Chat models behind one interface: offline (deterministic), OpenAI-compatible HTTP, Bedrock.

Every provider streams: `model.stream(system, turns, timeout_seconds=...)` yields the
answer's text as it is generated (deltas, never empty), then one `Completion` whose text is
the deltas joined, with the token counts (the provider's, else estimated). `complete()`
drains a stream for callers that want the whole answer at once.

Every provider turns its failures into two kinds: `TransientModelError` (timeouts, 429,
5xx, throttling, a stream that breaks off: worth retrying later) and `PermanentModelError`
(other 4xx, refusals, content filters, an empty answer: retrying the same request cannot
help), raised before the first delta or between any two. The worker decides what to do with
each; providers never retry by themselves, so one call costs at most one timeout.

Two deadlines bound a call: no text within `first_token_seconds` (or that long without a
byte mid-stream; a reasoning model's reasoning counts as its first sign of life, though it
is never shown), and the whole stream within `timeout_seconds`. A watchdog thread enforces
them while the call waits on the socket: when one passes it shuts the socket down, so the
blocked read returns at once, and the stream ends with a TransientModelError naming the
deadline.

httpx and boto3 are imported inside the providers that use them.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol, Self

from frontdesk.config import Settings

if TYPE_CHECKING:
    from frontdesk.platform.aws import Aws

Role = Literal["user", "assistant"]


@dataclass(frozen=True)
class ChatTurn:
    role: Role
    content: str


@dataclass(frozen=True)
class Completion:
    text: str
    provider: str
    model: str
    input_tokens: int
    output_tokens: int


# What a stream yields: text deltas, then one Completion.
type ChatStream = Generator[str | Completion]


class ModelError(Exception):
    """A model call that failed. The message is safe to show staff and to log."""


class TransientModelError(ModelError):
    def __init__(self, message: str, retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class PermanentModelError(ModelError):
    pass


class ChatModel(Protocol):
    provider: str
    model: str

    def stream(
        self,
        system: str,
        turns: Sequence[ChatTurn],
        *,
        timeout_seconds: float,
        first_token_seconds: float | None = None,
    ) -> ChatStream:
        """The answer as it is generated: text deltas, then one Completion (its text the
        deltas joined). Raises TransientModelError or PermanentModelError. Closing the
        generator early closes the connection."""
        ...

    @property
    def breaker_name(self) -> str: ...

    def close(self) -> None:
        """Release connections (containers never need to; tests and benchmarks do)."""
        ...


def complete(
    model: ChatModel,
    system: str,
    turns: Sequence[ChatTurn],
    *,
    timeout_seconds: float,
    first_token_seconds: float | None = None,
) -> Completion:
    """The whole answer at once: the model's stream, drained."""
    stream = model.stream(
        system, turns, timeout_seconds=timeout_seconds, first_token_seconds=first_token_seconds
    )
    try:
        for piece in stream:
            if isinstance(piece, Completion):
                return piece
    finally:
        stream.close()
    raise TransientModelError("the model's stream ended without an answer")


def _tokens(text: str) -> int:
    """A rough token count (about 4 characters a token) for providers that report none."""
    return max(1, (len(text) + 3) // 4)


class Deadlines:
    """The two deadlines of one streamed call, watched from a thread of their own.

    `watch(cut)` starts the watchdog once there is something to cut (the response's socket);
    `token()` says text has arrived; `check()` raises between chunks if a deadline has
    passed (the only enforcement when nothing can be cut); leaving the `with` block stops the
    watchdog. Before `watch`, the transport's own timeouts (the first-token timeout for
    connecting and every read) bound the wait.
    """

    def __init__(self, timeout_seconds: float, first_token_seconds: float | None) -> None:
        self.timeout_seconds = timeout_seconds
        self.first_token_seconds = min(first_token_seconds or timeout_seconds, timeout_seconds)
        started = time.monotonic()
        self._first_token_at = started + self.first_token_seconds
        self._end_at = started + timeout_seconds
        self._has_token = False
        self._expired: str | None = None
        self._stopped = threading.Event()
        self._lock = threading.Lock()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stopped.set()

    def watch(self, cut: Callable[[], None] | None) -> None:
        if cut is None:
            return
        watchdog = threading.Thread(target=self._watch, args=(cut,), name="model-deadline")
        watchdog.daemon = True
        watchdog.start()

    def token(self) -> None:
        self._has_token = True

    def expired(self) -> TransientModelError | None:
        """The deadline that has passed, if one has."""
        with self._lock:
            if self._expired is None:
                self._expired = self._passed(time.monotonic())
            reason = self._expired
        return TransientModelError(reason) if reason is not None else None

    def check(self) -> None:
        error = self.expired()
        if error is not None:
            raise error

    def _passed(self, now: float) -> str | None:
        if not self._has_token and now >= self._first_token_at:
            return f"the model timed out: no text within {self.first_token_seconds:g} s"
        if now >= self._end_at:
            return f"the model timed out: its answer took longer than {self.timeout_seconds:g} s"
        return None

    def _watch(self, cut: Callable[[], None]) -> None:
        while True:
            deadline = self._end_at if self._has_token else self._first_token_at
            if self._stopped.wait(max(0.0, deadline - time.monotonic())):
                return
            if self.expired() is not None:
                with suppress(Exception):  # already closed: nothing left to cut
                    cut()
                return


def _failure(deadlines: Deadlines, exc: Exception, what: str) -> TransientModelError:
    """A stream that ended in an error: the deadline that cut it, else the error itself."""
    expired = deadlines.expired()
    if expired is not None:
        return expired
    return TransientModelError(f"{what} ({type(exc).__name__})")


class OfflineModel:
    """Deterministic and instant: the default, and what `make dev` uses. Its answers say
    they are offline, quote the clinic's numbers from the context, and never leave the host.
    It streams too: its answer in chunks of a few words."""

    provider = "offline"
    model = "frontdesk-offline-1"
    WORDS_PER_CHUNK = 3

    @property
    def breaker_name(self) -> str:
        return f"{self.provider}:{self.model}"

    def stream(
        self,
        system: str,
        turns: Sequence[ChatTurn],
        *,
        timeout_seconds: float,
        first_token_seconds: float | None = None,
    ) -> ChatStream:
        question = next((t.content for t in reversed(turns) if t.role == "user"), "")
        digest = hashlib.sha256(question.encode()).hexdigest()[:8]
        facts = [line[2:] for line in system.splitlines() if line.startswith("- ")]
        text = (
            "[offline model: no AI provider is configured, this answer is generated locally] "
            f"You asked {len(question)} characters (ref {digest}). "
            + ("What I know: " + "; ".join(facts) + "." if facts else "I have no clinic data.")
        )
        words = re.findall(r"\S+\s*", text)
        for start in range(0, len(words), self.WORDS_PER_CHUNK):
            yield "".join(words[start : start + self.WORDS_PER_CHUNK])
        prompt = system + "".join(t.content for t in turns)
        yield Completion(text, self.provider, self.model, _tokens(prompt), _tokens(text))

    def close(self) -> None:
        pass


# Errors a chat-completions server may report inside a stream, by type or code, that are
# worth retrying; any other is the request's fault.
_TRANSIENT_STREAM_ERRORS = frozenset(
    {"server_error", "rate_limit_exceeded", "overloaded_error", "timeout", "api_error"}
)


class OpenAiCompatibleModel:
    """Any server speaking POST {base_url}/chat/completions (OpenAI, vLLM, Ollama, ...), asked
    for a stream (`stream: true`, server-sent events) with its usage in the last chunk
    (`stream_options.include_usage`). A server that refuses `stream_options` is asked again
    without it (and never again with it: the tokens are then estimated); one that ignores
    `stream` and answers with a whole completion is read as one delta."""

    provider = "openai"

    def __init__(
        self,
        base_url: str,
        api_key: str,
        model: str,
        *,
        max_output_tokens: int = 512,
        transport: Any = None,  # an httpx transport (unit tests use httpx.MockTransport)
    ) -> None:
        import httpx

        self.model = model
        self._max_output_tokens = max_output_tokens
        self._ask_for_usage = True
        self._client = httpx.Client(
            base_url=base_url.rstrip("/") + "/",
            headers={"Authorization": f"Bearer {api_key}"},
            transport=transport,
        )

    @property
    def breaker_name(self) -> str:
        return f"{self.provider}:{self._client.base_url.host}:{self.model}"

    def close(self) -> None:
        self._client.close()

    def _body(self, system: str, turns: Sequence[ChatTurn]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "system", "content": system}]
            + [{"role": t.role, "content": t.content} for t in turns],
            "max_tokens": self._max_output_tokens,
            "stream": True,
        }
        if self._ask_for_usage:
            body["stream_options"] = {"include_usage": True}
        return body

    def stream(
        self,
        system: str,
        turns: Sequence[ChatTurn],
        *,
        timeout_seconds: float,
        first_token_seconds: float | None = None,
    ) -> ChatStream:
        import httpx

        with Deadlines(timeout_seconds, first_token_seconds) as deadlines:
            # Connecting, sending and every read wait at most the first-token timeout; the
            # watchdog holds the whole stream to its deadline.
            timeout = httpx.Timeout(deadlines.first_token_seconds)
            for _ in range(2):  # a second time only without stream_options
                body = self._body(system, turns)
                request = self._client.build_request(
                    "POST", "chat/completions", json=body, timeout=timeout
                )
                try:
                    answer = self._client.send(request, stream=True)
                except httpx.TimeoutException as exc:
                    raise _failure(deadlines, exc, "the model timed out") from exc
                except httpx.TransportError as exc:
                    raise _failure(deadlines, exc, "the model is unreachable") from exc
                try:
                    if answer.status_code == 200:
                        yield from self._read(answer, body, deadlines)
                        return
                    error = self._refusal(answer, deadlines)
                finally:
                    answer.close()
                if error is not None:
                    raise error
                self._ask_for_usage = False

    def _refusal(self, answer: Any, deadlines: Deadlines) -> ModelError | None:
        """The error of a non-200 answer; None when only `stream_options` was refused."""
        import httpx

        status = answer.status_code
        if status == 429 or status == 408 or status >= 500:
            return TransientModelError(
                f"the model answered HTTP {status}", _retry_after(answer.headers.get("retry-after"))
            )
        if status in (400, 422) and self._ask_for_usage:
            with suppress(httpx.HTTPError):
                if b"stream_options" in answer.read()[:4096]:
                    return None
        return PermanentModelError(f"the model refused the request (HTTP {status})")

    def _read(self, answer: Any, body: dict[str, Any], deadlines: Deadlines) -> ChatStream:
        import httpx

        if "text/event-stream" not in answer.headers.get("content-type", ""):
            yield from self._read_whole(answer, body, deadlines)
            return
        network = answer.extensions.get("network_stream")
        sock = network.get_extra_info("socket") if network is not None else None
        deadlines.watch((lambda: sock.shutdown(socket.SHUT_RDWR)) if sock is not None else None)
        parts: list[str] = []
        usage: dict[str, Any] = {}
        model = self.model
        finished = done = False
        try:
            # Read on after [DONE] to the body's end, so the connection can be used again.
            for data in _sse_data(answer.iter_lines(), deadlines):
                if done:
                    continue
                if data == "[DONE]":
                    finished = done = True
                    continue
                chunk = _json_object(data)
                if "error" in chunk:
                    raise _stream_error(chunk["error"])
                model = str(chunk.get("model") or model)
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                        continue
                    delta = choice.get("delta") or {}
                    if delta.get("refusal"):
                        raise PermanentModelError("the model declined to answer this question")
                    text = delta.get("content")
                    if isinstance(text, str) and text:
                        deadlines.token()
                        parts.append(text)
                        yield text
                    elif delta.get("reasoning_content") or delta.get("reasoning"):
                        deadlines.token()  # a reasoning model thinking aloud: alive, not shown
                    reason = choice.get("finish_reason")
                    if reason == "content_filter":
                        raise PermanentModelError(
                            "the provider's content filter blocked the answer"
                        )
                    if reason:
                        finished = True
        except httpx.TimeoutException as exc:
            raise _failure(deadlines, exc, "the model timed out") from exc
        except httpx.TransportError as exc:
            raise _failure(deadlines, exc, "the model's stream broke off") from exc
        deadlines.check()
        if not finished:
            raise TransientModelError("the model's stream ended before its answer did")
        text = "".join(parts)
        if not text.strip():
            raise PermanentModelError("the model returned an empty answer")
        yield Completion(
            text=text,
            provider=self.provider,
            model=model,
            input_tokens=int(usage.get("prompt_tokens") or _tokens(json.dumps(body))),
            output_tokens=int(usage.get("completion_tokens") or _tokens(text)),
        )

    def _read_whole(self, answer: Any, body: dict[str, Any], deadlines: Deadlines) -> ChatStream:
        """A server that ignored `stream`: one chat-completions JSON answer."""
        import httpx

        try:
            data = json.loads(answer.read())
            choice = data["choices"][0]
            message = choice["message"]
        except httpx.TimeoutException as exc:
            raise _failure(deadlines, exc, "the model timed out") from exc
        except httpx.TransportError as exc:
            raise _failure(deadlines, exc, "the model's answer broke off") from exc
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise TransientModelError("the model's answer was not chat-completions JSON") from exc
        if message.get("refusal"):
            raise PermanentModelError("the model declined to answer this question")
        if choice.get("finish_reason") == "content_filter":
            raise PermanentModelError("the provider's content filter blocked the answer")
        text = message.get("content") or ""
        if not text.strip():
            raise PermanentModelError("the model returned an empty answer")
        usage = data.get("usage") or {}
        yield text
        yield Completion(
            text=text,
            provider=self.provider,
            model=str(data.get("model") or self.model),
            input_tokens=int(usage.get("prompt_tokens") or _tokens(json.dumps(body))),
            output_tokens=int(usage.get("completion_tokens") or _tokens(text)),
        )


def _sse_data(lines: Iterable[str], deadlines: Deadlines) -> Iterable[str]:
    """The `data` of each server-sent event (its data lines joined), in order."""
    data: list[str] = []
    for line in lines:
        deadlines.check()
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue  # a comment (servers send them to keep the connection alive)
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value.removeprefix(" "))
    if data:
        yield "\n".join(data)


def _json_object(data: str) -> dict[str, Any]:
    try:
        chunk = json.loads(data)
    except ValueError:
        chunk = None
    if not isinstance(chunk, dict):
        raise TransientModelError("the model's stream was not chat-completions chunks")
    return chunk


def _stream_error(error: Any) -> ModelError:
    """An error the server reports inside the stream: its type or code, never its message
    (it may quote the request)."""
    fields = error if isinstance(error, dict) else {}
    kinds = {str(fields.get("type") or ""), str(fields.get("code") or "")} - {""}
    name = "/".join(sorted(kinds)) or "unknown"
    if kinds & _TRANSIENT_STREAM_ERRORS:
        return TransientModelError(f"the model failed mid-stream ({name})")
    return PermanentModelError(f"the model refused the request mid-stream ({name})")


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:  # an HTTP date: the worker's backoff decides instead
        return None


class BedrockModel:
    """Amazon Bedrock's ConverseStream API through a boto3 client of its own (IAM
    `bedrock:InvokeModelWithResponseStream`): text from `contentBlockDelta` events, the stop
    reason from `messageStop`, the tokens from `metadata`."""

    provider = "bedrock"
    _TRANSIENT = frozenset(
        {
            "ThrottlingException",
            "ServiceUnavailableException",
            "InternalServerException",
            "ModelTimeoutException",
            "ModelNotReadyException",
            "ServiceQuotaExceededException",
            # A stream that failed on the model's side: "retry your request".
            "ModelStreamErrorException",
        }
    )

    def __init__(
        self,
        model_id: str,
        *,
        max_output_tokens: int = 512,
        client: Any = None,
        settings: Settings | None = None,
    ) -> None:
        self.model = model_id
        self._max_output_tokens = max_output_tokens
        self._given_client = client
        self._settings = settings or Settings()
        self._clients: dict[float, Any] = {}  # by read timeout

    @property
    def breaker_name(self) -> str:
        return f"{self.provider}:{self.model}"

    def close(self) -> None:
        pass

    def _client(self, timeout_seconds: float) -> Any:
        """A bedrock-runtime client whose read timeout is the per-read timeout, no SDK
        retries (the worker retries through the queue, so a call never outlives its
        timeout); one per distinct timeout, kept."""
        if self._given_client is not None:
            return self._given_client
        timeout = round(timeout_seconds, 1)
        client = self._clients.get(timeout)
        if client is None:
            import boto3
            from botocore.config import Config

            settings = self._settings
            config = Config(
                connect_timeout=min(settings.aws_connect_timeout_seconds, timeout),
                read_timeout=timeout,
                retries={"max_attempts": 1, "mode": "standard"},
            )
            client = self._clients[timeout] = boto3.session.Session().client(
                "bedrock-runtime",
                region_name=settings.aws_region,
                endpoint_url=settings.aws_endpoint_url,
                config=config,
            )
        return client

    def _error(self, exc: Exception) -> ModelError:
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", "Unknown"))
            code = code[:1].upper() + code[1:]  # in a stream: "throttlingException"
            if code in self._TRANSIENT:
                return TransientModelError(f"Bedrock error ({code})")
            return PermanentModelError(f"Bedrock refused the request ({code})")
        return TransientModelError(f"Bedrock unreachable ({type(exc).__name__})")

    def stream(
        self,
        system: str,
        turns: Sequence[ChatTurn],
        *,
        timeout_seconds: float,
        first_token_seconds: float | None = None,
    ) -> ChatStream:
        from botocore.exceptions import BotoCoreError, ClientError
        from urllib3.exceptions import HTTPError

        with Deadlines(timeout_seconds, first_token_seconds) as deadlines:
            try:
                answer = self._client(deadlines.first_token_seconds).converse_stream(
                    modelId=self.model,
                    system=[{"text": system}],
                    messages=[{"role": t.role, "content": [{"text": t.content}]} for t in turns],
                    inferenceConfig={"maxTokens": self._max_output_tokens},
                )
            except (ClientError, BotoCoreError) as exc:
                raise deadlines.expired() or self._error(exc) from exc
            events = answer["stream"]
            # urllib3's response can shut its socket down from another thread (2.3+).
            raw = getattr(events, "_raw_stream", None)
            deadlines.watch(getattr(raw, "shutdown", None))
            parts: list[str] = []
            usage: dict[str, Any] = {}
            stop: str | None = None
            try:
                for event in events:
                    deadlines.check()
                    if "contentBlockDelta" in event:
                        delta = event["contentBlockDelta"].get("delta", {})
                        text = delta.get("text")
                        if text:
                            deadlines.token()
                            parts.append(text)
                            yield text
                        elif delta.get("reasoningContent"):
                            deadlines.token()  # the model reasoning: alive, not shown
                    elif "messageStop" in event:
                        stop = str(event["messageStop"].get("stopReason") or "end_turn")
                        if stop in ("guardrail_intervened", "content_filtered"):
                            raise PermanentModelError(f"Bedrock blocked the answer ({stop})")
                    elif "metadata" in event:
                        usage = event["metadata"].get("usage") or usage
            except (ClientError, BotoCoreError, HTTPError, OSError) as exc:
                raise deadlines.expired() or self._error(exc) from exc
            finally:
                with suppress(Exception):
                    events.close()
            deadlines.check()
            if stop is None:
                raise TransientModelError("the model's stream ended before its answer did")
            text = "".join(parts)
            if not text.strip():
                raise PermanentModelError("the model returned an empty answer")
            yield Completion(
                text=text,
                provider=self.provider,
                model=self.model,
                input_tokens=int(usage.get("inputTokens") or 0),
                output_tokens=int(usage.get("outputTokens") or _tokens(text)),
            )


def api_key_from_secret(secret: str) -> str:
    """A secret holds the key itself or JSON with an "apiKey" (or "api_key") field."""
    secret = secret.strip()
    if secret.startswith("{"):
        fields = json.loads(secret)
        return str(fields.get("apiKey") or fields.get("api_key") or "")
    return secret


def model_from_settings(settings: Settings, aws: Aws | None = None) -> ChatModel:
    if settings.llm_provider == "openai":
        if settings.llm_api_key is not None:
            key = settings.llm_api_key.get_secret_value()
        elif settings.llm_secret_arn:
            if aws is None:
                raise ValueError("reading LLM_SECRET_ARN needs the container's AWS clients")
            key = api_key_from_secret(aws.secret(settings.llm_secret_arn))
        else:
            key = ""  # a local server that needs none
        return OpenAiCompatibleModel(
            settings.llm_base_url,
            key,
            settings.llm_model or "gpt-4o-mini",
            max_output_tokens=settings.llm_max_output_tokens,
        )
    if settings.llm_provider == "bedrock":
        return BedrockModel(
            settings.llm_model or "anthropic.claude-3-haiku-20240307-v1:0",
            max_output_tokens=settings.llm_max_output_tokens,
            settings=settings,
        )
    return OfflineModel()
