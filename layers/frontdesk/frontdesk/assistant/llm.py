"""Chat models behind one interface: offline (deterministic), OpenAI-compatible HTTP, Bedrock.

Every provider turns its failures into two kinds: `TransientModelError` (timeouts, 429,
5xx, throttling: worth retrying later) and `PermanentModelError` (other 4xx, refusals,
content filters: retrying the same request cannot help). The worker decides what to do
with each; providers never retry by themselves, so one call costs at most one timeout.

httpx and boto3 are imported inside the providers that use them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

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

    def complete(
        self, system: str, turns: Sequence[ChatTurn], *, timeout_seconds: float
    ) -> Completion:
        """One completion; raises TransientModelError or PermanentModelError."""
        ...

    @property
    def breaker_name(self) -> str: ...

    def close(self) -> None:
        """Release connections (containers never need to; tests and benchmarks do)."""
        ...


def _tokens(text: str) -> int:
    """A rough token count (about 4 characters a token) for providers that report none."""
    return max(1, (len(text) + 3) // 4)


class OfflineModel:
    """Deterministic and instant: the default, and what `make dev` uses. Its answers say
    they are offline, quote the clinic's numbers from the context, and never leave the host."""

    provider = "offline"
    model = "frontdesk-offline-1"

    @property
    def breaker_name(self) -> str:
        return f"{self.provider}:{self.model}"

    def complete(
        self, system: str, turns: Sequence[ChatTurn], *, timeout_seconds: float
    ) -> Completion:
        question = next((t.content for t in reversed(turns) if t.role == "user"), "")
        digest = hashlib.sha256(question.encode()).hexdigest()[:8]
        facts = [line[2:] for line in system.splitlines() if line.startswith("- ")]
        text = (
            "[offline model: no AI provider is configured, this answer is generated locally] "
            f"You asked {len(question)} characters (ref {digest}). "
            + ("What I know: " + "; ".join(facts) + "." if facts else "I have no clinic data.")
        )
        prompt = system + "".join(t.content for t in turns)
        return Completion(text, self.provider, self.model, _tokens(prompt), _tokens(text))

    def close(self) -> None:
        pass


class OpenAiCompatibleModel:
    """Any server speaking POST {base_url}/chat/completions (OpenAI, vLLM, Ollama, ...)."""

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

    def complete(
        self, system: str, turns: Sequence[ChatTurn], *, timeout_seconds: float
    ) -> Completion:
        import httpx

        body = {
            "model": self.model,
            "messages": [{"role": "system", "content": system}]
            + [{"role": t.role, "content": t.content} for t in turns],
            "max_tokens": self._max_output_tokens,
        }
        try:
            # One deadline for connect, write and read: a hanging server costs `timeout`.
            answer = self._client.post("chat/completions", json=body, timeout=timeout_seconds)
        except httpx.TimeoutException as exc:
            raise TransientModelError(f"the model timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise TransientModelError(f"the model is unreachable ({type(exc).__name__})") from exc
        status = answer.status_code
        if status == 429 or status == 408 or status >= 500:
            raise TransientModelError(
                f"the model answered HTTP {status}", _retry_after(answer.headers.get("retry-after"))
            )
        if status >= 400:
            raise PermanentModelError(f"the model refused the request (HTTP {status})")
        try:
            data = answer.json()
            choice = data["choices"][0]
            message = choice["message"]
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
        return Completion(
            text=text,
            provider=self.provider,
            model=str(data.get("model") or self.model),
            input_tokens=int(usage.get("prompt_tokens") or _tokens(json.dumps(body))),
            output_tokens=int(usage.get("completion_tokens") or _tokens(text)),
        )


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:  # an HTTP date: the worker's backoff decides instead
        return None


class BedrockModel:
    """Amazon Bedrock's Converse API through the container's boto3 client."""

    provider = "bedrock"
    _TRANSIENT = frozenset(
        {
            "ThrottlingException",
            "ServiceUnavailableException",
            "InternalServerException",
            "ModelTimeoutException",
            "ModelNotReadyException",
            "ServiceQuotaExceededException",
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
        """A bedrock-runtime client whose read timeout is the per-call timeout, no SDK
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
                connect_timeout=settings.aws_connect_timeout_seconds,
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

    def complete(
        self, system: str, turns: Sequence[ChatTurn], *, timeout_seconds: float
    ) -> Completion:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = self._client(timeout_seconds).converse(
                modelId=self.model,
                system=[{"text": system}],
                messages=[{"role": t.role, "content": [{"text": t.content}]} for t in turns],
                inferenceConfig={"maxTokens": self._max_output_tokens},
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "Unknown")
            if code in self._TRANSIENT:
                raise TransientModelError(f"Bedrock error ({code})") from exc
            raise PermanentModelError(f"Bedrock refused the request ({code})") from exc
        except BotoCoreError as exc:
            raise TransientModelError(f"Bedrock unreachable ({type(exc).__name__})") from exc
        stop = answer.get("stopReason")
        if stop in ("guardrail_intervened", "content_filtered"):
            raise PermanentModelError(f"Bedrock blocked the answer ({stop})")
        blocks = answer.get("output", {}).get("message", {}).get("content", [])
        text = "".join(block.get("text", "") for block in blocks)
        if not text.strip():
            raise PermanentModelError("the model returned an empty answer")
        usage = answer.get("usage") or {}
        return Completion(
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
