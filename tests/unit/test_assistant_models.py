"""Model providers and the worker's retry arithmetic, without sockets: httpx's MockTransport
stands in for the chat-completions server and botocore's Stubber for Bedrock."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from frontdesk.assistant.llm import (
    BedrockModel,
    ChatTurn,
    OfflineModel,
    OpenAiCompatibleModel,
    PermanentModelError,
    TransientModelError,
    api_key_from_secret,
    model_from_settings,
)
from frontdesk.config import Settings
from frontdesk.workers.llm import backoff_seconds, call_timeout

TURNS = [ChatTurn("user", "How many leads this week?")]
SYSTEM = "You are the assistant.\n- new leads this week: 4\n"


def completion(content: Any = "Four.", finish: str = "stop", **message: Any) -> dict[str, Any]:
    return {
        "model": "m-1",
        "choices": [
            {
                "message": {"role": "assistant", "content": content, **message},
                "finish_reason": finish,
            }
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 2},
    }


def openai(respond: Any) -> OpenAiCompatibleModel:
    return OpenAiCompatibleModel(
        "http://model.invalid/v1", "sk-1", "m-1", transport=httpx.MockTransport(respond)
    )


def test_openai_compatible_success_sends_the_protocol_and_reads_usage() -> None:
    seen: list[httpx.Request] = []

    def respond(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=completion())

    # When the model is asked
    answer = openai(respond).complete(SYSTEM, TURNS, timeout_seconds=5)
    # Then it posted chat-completions with the key, the system prompt first
    (request,) = seen
    assert request.url == "http://model.invalid/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-1"
    body = json.loads(request.content)
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert (answer.text, answer.input_tokens, answer.output_tokens) == ("Four.", 11, 2)


@pytest.mark.parametrize(
    ("response", "kind", "hint"),
    [
        (httpx.Response(429, headers={"Retry-After": "7"}), TransientModelError, 7.0),
        (httpx.Response(503), TransientModelError, None),
        (httpx.Response(408), TransientModelError, None),
        (httpx.Response(200, text="<html>"), TransientModelError, None),
        (httpx.Response(401), PermanentModelError, None),
        (httpx.Response(400), PermanentModelError, None),
        (httpx.Response(200, json=completion(None, refusal="no")), PermanentModelError, None),
        (httpx.Response(200, json=completion("x", "content_filter")), PermanentModelError, None),
    ],
    ids=["429", "503", "408", "not-json", "401", "400", "refusal", "content-filter"],
)
def test_openai_compatible_errors_are_classified(
    response: httpx.Response, kind: type[Exception], hint: float | None
) -> None:
    # Given a server answering `response` / When asked / Then the error kind is right
    with pytest.raises(kind) as raised:
        openai(lambda _: response).complete(SYSTEM, TURNS, timeout_seconds=5)
    if isinstance(raised.value, TransientModelError):
        assert raised.value.retry_after_seconds == hint


def test_openai_compatible_timeout_is_transient() -> None:
    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(TransientModelError, match="timed out"):
        openai(hang).complete(SYSTEM, TURNS, timeout_seconds=0.1)


def bedrock_stubbed() -> tuple[Any, Any]:
    import boto3
    from botocore.stub import Stubber

    client = boto3.client("bedrock-runtime", region_name="us-east-1")
    return client, Stubber(client)


def test_bedrock_converse_success_and_errors() -> None:
    client, stubber = bedrock_stubbed()
    model = BedrockModel("anthropic.claude-test", client=client)
    ok = {
        "output": {"message": {"role": "assistant", "content": [{"text": "Four."}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 9, "outputTokens": 2, "totalTokens": 11},
        "metrics": {"latencyMs": 10},
    }
    blocked = {**ok, "stopReason": "guardrail_intervened"}
    expected = {
        "modelId": "anthropic.claude-test",
        "system": [{"text": SYSTEM}],
        "messages": [{"role": "user", "content": [{"text": TURNS[0].content}]}],
        "inferenceConfig": {"maxTokens": 512},
    }
    stubber.add_response("converse", ok, expected)
    stubber.add_response("converse", blocked, expected)
    stubber.add_client_error("converse", "ThrottlingException", http_status_code=429)
    stubber.add_client_error("converse", "ValidationException", http_status_code=400)
    with stubber:
        answer = model.complete(SYSTEM, TURNS, timeout_seconds=5)
        assert (answer.text, answer.input_tokens, answer.provider) == ("Four.", 9, "bedrock")
        with pytest.raises(PermanentModelError, match="guardrail_intervened"):
            model.complete(SYSTEM, TURNS, timeout_seconds=5)
        with pytest.raises(TransientModelError, match="ThrottlingException"):
            model.complete(SYSTEM, TURNS, timeout_seconds=5)
        with pytest.raises(PermanentModelError, match="ValidationException"):
            model.complete(SYSTEM, TURNS, timeout_seconds=5)


def test_the_offline_model_is_deterministic_and_says_it_is_offline() -> None:
    first = OfflineModel().complete(SYSTEM, TURNS, timeout_seconds=1)
    again = OfflineModel().complete(SYSTEM, TURNS, timeout_seconds=1)
    assert first == again
    assert first.text.startswith("[offline model") and "new leads this week: 4" in first.text


def test_the_provider_is_chosen_by_settings() -> None:
    assert isinstance(model_from_settings(Settings()), OfflineModel)
    model = model_from_settings(
        Settings(llm_provider="openai", llm_base_url="http://x.invalid/v1", llm_api_key="k")
    )
    assert isinstance(model, OpenAiCompatibleModel) and model.breaker_name.startswith("openai:")
    model.close()
    assert isinstance(model_from_settings(Settings(llm_provider="bedrock")), BedrockModel)
    assert api_key_from_secret('{"apiKey": "sk-2"}') == "sk-2"
    assert api_key_from_secret(" sk-3\n") == "sk-3"


def test_backoff_grows_exponentially_with_jitter_and_respects_cap_and_hint() -> None:
    for receive in range(1, 8):
        ceiling = min(300, 2 * 2 ** (receive - 1))
        delays = {backoff_seconds(receive, 2, 300) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling + 1 for d in delays)
    assert backoff_seconds(1, 2, 300, hint=40) >= 40
    assert backoff_seconds(1, 2, 10, hint=40) <= 10
    assert backoff_seconds(9, 0, 0) == 0


def test_the_call_timeout_stays_inside_the_functions_remaining_time() -> None:
    settings = Settings(llm_timeout_seconds=20)
    assert call_timeout(settings, None) == 20
    assert call_timeout(settings, 60_000) == 20
    assert call_timeout(settings, 12_000) == 7  # 12 s left, 5 s kept for the transactions
    assert call_timeout(settings, 2_000) == 1  # never below a second
