"""Every parser of untrusted bytes, fuzzed (hypothesis): any input is accepted as a typed
value or rejected with the parser's own error and a reason; nothing else escapes."""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from frontdesk.errors import FrontdeskError, PermanentMessageError, Unauthorized

FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=12,
)
ids = st.uuids().map(str) | st.text(max_size=40)
kinds = st.sampled_from(
    [
        "notify.lead_created",
        "appointment.reminder",
        "assistant.reply",
        "sync.fetch",
        "sync.validate",
        "leads.import",
        "other",
    ]
)
# Bodies shaped like the real ones, with every field liable to be wrong or missing.
shaped = st.fixed_dictionaries(
    {},
    optional={
        "jobId": ids,
        "kind": kinds,
        "clinicId": ids,
        "reminderId": ids,
        "detail-type": st.sampled_from(
            [
                "appointment.booked",
                "appointment.rescheduled",
                "appointment.cancelled",
                "job.progress",
                "lead.created",
                "x",
            ]
        ),
        "source": st.sampled_from(["frontdesk", "other"]),
        "id": ids,
        "detail": st.fixed_dictionaries(
            {},
            optional={
                "eventId": ids,
                "clinicId": ids,
                "appointmentId": ids,
                "startsAt": st.datetimes().map(lambda d: d.isoformat()) | ids,
            },
        ),
        "extra": json_values,
    },
)
bodies = (
    st.text(max_size=200)
    | json_values.map(json.dumps)
    | shaped.map(json.dumps)
    | st.binary(max_size=80).map(lambda b: b.decode("latin-1"))
)


def _parsers() -> dict[str, Callable[[str], Any]]:
    from frontdesk.platform.queues import Queue, parse

    return {
        f"{queue.value} queue": functools.partial(parse, queue)
        for queue in Queue  # every queue: a new one is fuzzed as soon as it exists
    }


@pytest.mark.parametrize("name", sorted(_parsers()))
def test_a_queue_message_parser_accepts_or_rejects_with_a_reason(name: str) -> None:
    parse = _parsers()[name]

    @FUZZ
    @given(body=bodies)
    def check(body: str) -> None:
        # Given any body / When parsed
        try:
            parse(body)
        except PermanentMessageError as exc:
            # Then a rejection says why, naming fields, never echoing values
            assert exc.detail.startswith("malformed") and "(" in exc.detail
            assert len(exc.detail) < 2000

    check()


def test_valid_messages_are_accepted() -> None:
    job, clinic = str(uuid.uuid4()), str(uuid.uuid4())
    parsers = _parsers()
    parsers["notifications queue"](
        json.dumps({"jobId": job, "kind": "notify.lead_created", "clinicId": clinic})
    )
    parsers["llm queue"](json.dumps({"jobId": job, "kind": "assistant.reply", "clinicId": clinic}))
    parsers["sync queue"](json.dumps({"jobId": job, "kind": "sync.fetch", "clinicId": clinic}))
    event = parsers["push queue"](
        json.dumps(
            {
                "id": "e1",
                "source": "frontdesk",
                "detail-type": "job.progress",
                "detail": {"eventId": str(uuid.uuid4()), "clinicId": clinic, "jobId": job},
            }
        )
    )
    assert str(event.clinic_id) == clinic and event.detail["jobId"] == job


signature_headers = (
    st.none()
    | st.text(max_size=300)
    | st.lists(
        st.tuples(
            st.sampled_from(["t", "v1", "v0", "", " t", "x"]),
            st.sampled_from(["=", "", "=="]),
            st.text(alphabet="0123456789abcdefABCDEF xyz-+", max_size=70) | st.integers().map(str),
        ).map("".join),
        max_size=6,
    ).map(",".join)
)


@FUZZ
@given(header=signature_headers)
def test_the_webhook_signature_parser_accepts_or_rejects_with_a_reason(header: str | None) -> None:
    from frontdesk.platform.signature import parse_signature

    # Given any header / When parsed
    try:
        signature = parse_signature(header)
    except Unauthorized as exc:
        # Then a rejection names the header
        assert "Webhook-Signature" in exc.detail or "signature" in exc.detail.lower()
        return
    # Or it is a timestamp with at least one signature
    assert signature.timestamp >= 0 and signature.signatures


@FUZZ
@given(body=st.binary(max_size=300) | bodies.map(str.encode))
def test_the_webhook_body_parser_accepts_or_rejects_with_a_reason(body: bytes) -> None:
    from frontdesk.sync.webhooks import parse_delivery

    try:
        parse_delivery(body)
    except FrontdeskError as exc:
        assert exc.status == 422 and exc.detail
