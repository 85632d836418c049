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
    Completion,
    OfflineModel,
    OpenAiCompatibleModel,
    PermanentModelError,
    TransientModelError,
    api_key_from_secret,
    complete,
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
    answer = complete(openai(respond), SYSTEM, TURNS, timeout_seconds=5)
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
        complete(openai(lambda _: response), SYSTEM, TURNS, timeout_seconds=5)
    if isinstance(raised.value, TransientModelError):
        assert raised.value.retry_after_seconds == hint


def chunk(content: str | None = None, finish: str | None = None, **delta: Any) -> dict[str, Any]:
    if content is not None:
        delta["content"] = content
    return {"model": "m-1", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def sse(*events: Any, done: bool = True) -> httpx.Response:
    """A chat-completions stream: each event a data line (JSON unless a str), then [DONE]."""
    lines = [": keep-alive\n\n"] + [
        f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events
    ]
    if done:
        lines.append("data: [DONE]\n\n")
    return httpx.Response(
        200, headers={"content-type": "text/event-stream"}, content="".join(lines).encode()
    )


USAGE = {"model": "m-1", "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 2}}


def test_openai_compatible_streams_deltas_and_reads_the_usage_of_the_last_chunk() -> None:
    seen: list[httpx.Request] = []

    def respond(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        role = chunk("", role="assistant")
        return sse(role, chunk("Fo"), chunk("ur."), chunk(finish="stop"), USAGE)

    # When the model streams
    pieces = list(openai(respond).stream(SYSTEM, TURNS, timeout_seconds=5))
    # Then it asked for a stream with the usage, and gave the text deltas then the completion
    body = json.loads(seen[0].content)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert pieces[:2] == ["Fo", "ur."]
    assert pieces[2] == Completion("Four.", "openai", "m-1", 11, 2) and len(pieces) == 3


def test_openai_compatible_estimates_the_tokens_when_no_usage_comes() -> None:
    answer = complete(
        openai(lambda _: sse(chunk("Four leads this week."), chunk(finish="length"))),
        SYSTEM,
        TURNS,
        timeout_seconds=5,
    )
    assert answer.text == "Four leads this week." and answer.output_tokens == 6
    assert answer.input_tokens > 10


def test_openai_compatible_asks_again_without_stream_options_when_they_are_refused() -> None:
    bodies: list[dict[str, Any]] = []

    def respond(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append(body)
        if "stream_options" in body:
            error = {"message": "Unrecognized request argument: stream_options"}
            return httpx.Response(400, json={"error": error})
        return sse(chunk("Four."), chunk(finish="stop"))

    model = openai(respond)
    # When the server refuses stream_options / Then the answer still comes, estimated
    assert complete(model, SYSTEM, TURNS, timeout_seconds=5).text == "Four."
    # And the model never asks with them again
    assert complete(model, SYSTEM, TURNS, timeout_seconds=5).text == "Four."
    assert ["stream_options" in b for b in bodies] == [True, False, False]


@pytest.mark.parametrize(
    ("response", "kind", "match"),
    [
        (sse(chunk("Fo"), {"error": {"type": "server_error"}}), TransientModelError, "mid-stream"),
        (sse(chunk("Fo"), {"error": {"code": "rate_limit_exceeded"}}), TransientModelError, "rate"),
        (
            sse(chunk("Fo"), {"error": {"type": "invalid_request_error", "message": "ada@x.org"}}),
            PermanentModelError,
            r"mid-stream \(invalid_request_error\)$",
        ),
        (sse(chunk("Fo"), done=False), TransientModelError, "ended before"),
        (sse(chunk("Fo"), "<html>"), TransientModelError, "not chat-completions"),
        (sse(chunk("Fo"), chunk(finish="content_filter")), PermanentModelError, "content filter"),
        (sse(chunk(None, refusal="I can't")), PermanentModelError, "declined"),
        (sse(chunk(" "), chunk(finish="stop")), PermanentModelError, "empty answer"),
    ],
    ids=[
        "error-event",
        "rate-limited-mid-stream",
        "invalid-mid-stream",
        "no-end",
        "not-json",
        "content-filter",
        "refusal",
        "empty",
    ],
)
def test_openai_compatible_stream_errors_are_classified(
    response: httpx.Response, kind: type[Exception], match: str
) -> None:
    with pytest.raises(kind, match=match):
        complete(openai(lambda _: response), SYSTEM, TURNS, timeout_seconds=5)


def test_a_stream_past_its_deadline_is_a_timeout() -> None:
    import time

    def slow() -> Any:
        yield b'data: {"choices": [{"index": 0, "delta": {"content": "Fo"}}]}\n\n'
        time.sleep(0.2)  # longer than the whole deadline (no socket to cut: checked between)
        yield b'data: {"choices": [{"index": 0, "delta": {"content": "ur"}}]}\n\n'

    def respond(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=slow())

    with pytest.raises(TransientModelError, match=r"took longer than 0\.05 s"):
        complete(openai(respond), SYSTEM, TURNS, timeout_seconds=0.05)


def test_reasoning_is_not_shown_but_counts_as_the_first_sign_of_life() -> None:
    import time

    def thinking() -> Any:
        yield b'data: {"choices": [{"index": 0, "delta": {"reasoning_content": "Hm"}}]}\n\n'
        time.sleep(0.2)  # past the first-token deadline, not the whole one
        yield b'data: {"choices": [{"index": 0, "delta": {"content": "Four."}}]}\n\n'
        yield b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n'

    def respond(_: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, content=thinking()
        )

    pieces = list(openai(respond).stream(SYSTEM, TURNS, timeout_seconds=5, first_token_seconds=0.1))
    assert pieces[0] == "Four." and isinstance(pieces[1], Completion)
    assert pieces[1].text == "Four."


def test_openai_compatible_timeout_is_transient() -> None:
    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(TransientModelError, match="timed out"):
        complete(openai(hang), SYSTEM, TURNS, timeout_seconds=0.1)


def bedrock_stubbed() -> tuple[Any, Any]:
    import boto3
    from botocore.stub import Stubber

    client = boto3.client("bedrock-runtime", region_name="us-east-1")
    return client, Stubber(client)


def event_frame(headers: dict[str, str], payload: dict[str, Any]) -> bytes:
    """One message of AWS's event stream encoding (application/vnd.amazon.eventstream):
    prelude (lengths and their CRC), string headers, the JSON payload, the message's CRC."""
    import struct
    import zlib

    encoded = b"".join(
        bytes([len(name)])
        + name.encode()
        + b"\x07"
        + struct.pack(">H", len(value))
        + value.encode()
        for name, value in headers.items()
    )
    body = json.dumps(payload).encode()
    prelude = struct.pack(">II", 12 + len(encoded) + len(body) + 4, len(encoded))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded + body
    return message + struct.pack(">I", zlib.crc32(message))


def event(kind: str, payload: dict[str, Any]) -> bytes:
    headers = {":message-type": "event", ":event-type": kind, ":content-type": "application/json"}
    return event_frame(headers, payload)


def exception(kind: str, message: str) -> bytes:
    headers = {
        ":message-type": "exception",
        ":exception-type": kind,
        ":content-type": "application/json",
    }
    return event_frame(headers, {"message": message})


class RawStream:
    """What botocore's EventStream reads: the HTTP body, here given as bytes."""

    def __init__(self, frames: list[bytes]) -> None:
        self._data = b"".join(frames)

    def stream(self) -> Any:
        for start in range(0, len(self._data), 7):  # odd pieces: frames span reads
            yield self._data[start : start + 7]

    def close(self) -> None:
        pass


class StreamingBedrock:
    """A bedrock-runtime client whose converse_stream answers with real event-stream bytes,
    parsed by botocore's own EventStream; errors before the stream from botocore's Stubber."""

    def __init__(self, *answers: list[bytes] | str) -> None:
        import boto3

        self._real = boto3.client("bedrock-runtime", region_name="us-east-1")
        self._answers = list(answers)
        self.calls: list[dict[str, Any]] = []

    def converse_stream(self, **params: Any) -> dict[str, Any]:
        from botocore.eventstream import EventStream
        from botocore.exceptions import ClientError
        from botocore.parsers import EventStreamJSONParser

        self.calls.append(params)
        answer = self._answers.pop(0)
        if isinstance(answer, str):  # an error answered before any event
            raise ClientError({"Error": {"Code": answer, "Message": "no"}}, "ConverseStream")
        operation = self._real.meta.service_model.operation_model("ConverseStream")
        shape = operation.output_shape.members["stream"]
        return {
            "stream": EventStream(
                RawStream(answer), shape, EventStreamJSONParser(), "ConverseStream"
            )
        }


def bedrock_answer(*texts: str, stop: str = "end_turn", usage: bool = True) -> list[bytes]:
    frames = [event("messageStart", {"role": "assistant"})]
    frames += [
        event("contentBlockDelta", {"delta": {"text": t}, "contentBlockIndex": 0}) for t in texts
    ]
    frames += [event("contentBlockStop", {"contentBlockIndex": 0})]
    frames += [event("messageStop", {"stopReason": stop})]
    if usage:
        frames += [
            event(
                "metadata",
                {
                    "usage": {"inputTokens": 9, "outputTokens": 2, "totalTokens": 11},
                    "metrics": {"latencyMs": 10},
                },
            )
        ]
    return frames


def test_bedrock_converse_stream_yields_the_deltas_then_the_usage() -> None:
    # Given Bedrock streaming "Four" + " leads." with its usage in the metadata event
    client = StreamingBedrock(bedrock_answer("Four", " leads."))
    model = BedrockModel("anthropic.claude-test", client=client)
    # When the model streams
    pieces = list(model.stream(SYSTEM, TURNS, timeout_seconds=5))
    # Then the text deltas come as Bedrock sent them, then the completion with the tokens
    assert pieces[:2] == ["Four", " leads."]
    completion = pieces[2]
    assert isinstance(completion, Completion) and len(pieces) == 3
    assert (completion.text, completion.input_tokens, completion.output_tokens) == (
        "Four leads.",
        9,
        2,
    )
    # And it asked ConverseStream with the system prompt, the turns and the output limit
    assert client.calls == [
        {
            "modelId": "anthropic.claude-test",
            "system": [{"text": SYSTEM}],
            "messages": [{"role": "user", "content": [{"text": TURNS[0].content}]}],
            "inferenceConfig": {"maxTokens": 512},
        }
    ]


@pytest.mark.parametrize(
    ("answer", "kind", "match"),
    [
        ("ThrottlingException", TransientModelError, "ThrottlingException"),
        ("ValidationException", PermanentModelError, "ValidationException"),
        (bedrock_answer("x", stop="guardrail_intervened"), PermanentModelError, "guardrail"),
        (bedrock_answer(" "), PermanentModelError, "empty answer"),
        (
            [*bedrock_answer("Fo")[:2], exception("throttlingException", "slow down")],
            TransientModelError,
            "ThrottlingException",
        ),
        (
            [*bedrock_answer("Fo")[:2], exception("modelStreamErrorException", "broke")],
            TransientModelError,
            "ModelStreamErrorException",
        ),
        (
            [*bedrock_answer("Fo")[:2], exception("validationException", "bad")],
            PermanentModelError,
            "ValidationException",
        ),
        (bedrock_answer("Fo")[:2], TransientModelError, "ended before"),
    ],
    ids=[
        "throttled",
        "invalid",
        "guardrail",
        "empty",
        "throttled-mid-stream",
        "model-stream-error",
        "invalid-mid-stream",
        "cut-short",
    ],
)
def test_bedrock_errors_before_and_during_the_stream_are_classified(
    answer: Any, kind: type[Exception], match: str
) -> None:
    model = BedrockModel("anthropic.claude-test", client=StreamingBedrock(answer))
    with pytest.raises(kind, match=match):
        complete(model, SYSTEM, TURNS, timeout_seconds=5)


def test_bedrock_stubbed_error_before_the_stream() -> None:
    # botocore's Stubber for the error answer of the operation itself
    client, stubber = bedrock_stubbed()
    stubber.add_client_error("converse_stream", "ServiceUnavailableException", http_status_code=503)
    with stubber, pytest.raises(TransientModelError, match="ServiceUnavailable"):
        complete(BedrockModel("m", client=client), SYSTEM, TURNS, timeout_seconds=5)


def test_the_offline_model_is_deterministic_and_says_it_is_offline() -> None:
    first = complete(OfflineModel(), SYSTEM, TURNS, timeout_seconds=1)
    again = complete(OfflineModel(), SYSTEM, TURNS, timeout_seconds=1)
    assert first == again
    assert first.text.startswith("[offline model") and "new leads this week: 4" in first.text


def test_the_offline_model_streams_a_few_words_at_a_time() -> None:
    pieces = list(OfflineModel().stream(SYSTEM, TURNS, timeout_seconds=1))
    *deltas, completion = pieces
    assert isinstance(completion, Completion) and len(deltas) > 5
    assert all(isinstance(d, str) and d for d in deltas)
    assert "".join(deltas) == completion.text  # type: ignore[arg-type]
    assert pieces == list(OfflineModel().stream(SYSTEM, TURNS, timeout_seconds=1))


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
