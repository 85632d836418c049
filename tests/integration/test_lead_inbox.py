"""The lead inbox through ApiFunction's handler against real PostgreSQL: keyset pages that
stay stable under inserts, filters, exact search through the blind indexes, the lifecycle
enforced by the database, events in the same unit of work, Idempotency-Key on PATCH."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from tests.integration.conftest import App
from tests.support import LambdaContext, http_event, http_response


def call(
    api: Any,
    method: str,
    path: str,
    clinic_id: uuid.UUID,
    body: Any = None,
    query: str = "",
    subject: str | None = None,
    **headers: str,
) -> tuple[int, dict[str, str], Any]:
    event = http_event(method, path, body=body, clinic_id=clinic_id, query=query, headers=headers)
    if query:
        event["queryStringParameters"] = dict(p.split("=", 1) for p in query.split("&"))
    if subject is not None:
        event["requestContext"]["authorizer"]["jwt"]["claims"]["sub"] = subject
    return http_response(api.handler(event, LambdaContext()))


def rows(app: App, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(app.database_url) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


def add_lead(api: Any, clinic_id: uuid.UUID, n: int, **fields: Any) -> str:
    body = {"name": f"Person {n}", "email": f"p{n}@example.org", "consent": True, **fields}
    status, _, answer = call(api, "POST", "/leads", clinic_id, body)
    assert status == 201, answer
    lead_id: str = answer["data"]["id"]
    return lead_id


def page(api: Any, clinic_id: uuid.UUID, query: str = "") -> dict[str, Any]:
    status, _, answer = call(api, "GET", "/leads", clinic_id, query=query)
    assert status == 200, answer
    data: dict[str, Any] = answer["data"]
    return data


def walk(api: Any, clinic_id: uuid.UUID, query: str, between: Any = None) -> list[str]:
    """Every page's ids, following nextCursor; `between` runs after each page."""
    seen: list[str] = []
    cursor = None
    while True:
        q = query + (f"&cursor={cursor}" if cursor else "")
        data = page(api, clinic_id, q)
        seen += [item["id"] for item in data["items"]]
        cursor = data["nextCursor"]
        if between:
            between()
        if cursor is None:
            return seen


def events(app: App, *kinds: str) -> list[dict[str, Any]]:
    found = rows(
        app,
        """SELECT payload FROM outbox WHERE payload->>'detailType' = ANY(%s) ORDER BY id""",
        list(kinds),
    )
    return [{"type": p["detailType"], **p["detail"]} for (p,) in found]


def test_pages_are_stable_under_inserts_and_decrypt_only_the_page(app: App, api: Any) -> None:
    # Given 7 leads of the clinic and one of another clinic
    made = [add_lead(api, app.clinic_id, n) for n in range(7)]
    other = add_lead(api, app.other_clinic_id, 99)
    # When staff walk the inbox 3 at a time while a new lead arrives after every page
    arrivals: list[str] = []
    seen = walk(
        api,
        app.clinic_id,
        "limit=3",
        between=lambda: arrivals.append(add_lead(api, app.clinic_id, 100 + len(arrivals))),
    )
    # Then the pages held exactly the leads there were at the start, newest first, each once
    assert seen == list(reversed(made))
    assert other not in seen and not set(arrivals) & set(seen)
    # And a page shows the decrypted contact fields and the lifecycle
    first = page(api, app.clinic_id, "limit=1")["items"][0]
    assert first["id"] == arrivals[-1]
    assert first["email"] == f"p{100 + len(arrivals) - 1}@example.org"
    assert first["status"] == "new" and first["assignedTo"] is None


def test_filters_combine_and_search_is_exact_through_the_blind_index(
    app: App, api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given leads of two sources, one address twice (a duplicate), and the same address in
    # another clinic
    web = [add_lead(api, app.clinic_id, n) for n in range(3)]
    ads = [add_lead(api, app.clinic_id, n, source="ads") for n in range(3, 5)]
    twice = add_lead(api, app.clinic_id, 5, email="Same.Person@Example.org", phone="+1 555 0100")
    again = add_lead(api, app.clinic_id, 6, email="same.person@example.org")
    add_lead(api, app.other_clinic_id, 7, email="same.person@example.org")
    # When staff filter by source, then search by email (any case) and by phone (any format)
    assert walk(api, app.clinic_id, "source=ads") == list(reversed(ads))
    by_email = page(api, app.clinic_id, "email=SAME.person@example.org")["items"]
    by_phone = page(api, app.clinic_id, "phone=%2B15550100")["items"]
    # Then each finds exactly its clinic's leads, the duplicate included
    assert [i["id"] for i in by_email] == [again, twice]
    assert by_email[0]["duplicateOf"] == twice
    assert [i["id"] for i in by_phone] == [twice]
    assert page(api, app.clinic_id, "email=nobody@example.org")["items"] == []
    # And a created range is [from, to)
    (created,) = rows(app, "SELECT created_at FROM leads WHERE id = %s", web[1])[0]
    stamp = created.astimezone(UTC).isoformat().replace("+00:00", "Z")
    from_query = f"createdFrom={stamp}&createdTo={stamp}"
    status, _, answer = call(api, "GET", "/leads", app.clinic_id, query=from_query)
    assert status == 422 and "createdFrom" in answer["detail"]  # an empty range is refused
    upto = (created + timedelta(microseconds=1)).astimezone(UTC).isoformat()
    ranged = page(
        api, app.clinic_id, f"createdFrom={stamp}&createdTo={upto.replace('+00:00', 'Z')}"
    )
    assert web[1] in [i["id"] for i in ranged["items"]]


def test_a_cursor_is_opaque_and_bound_to_its_filters(app: App, api: Any) -> None:
    for n in range(3):
        add_lead(api, app.clinic_id, n)
    cursor = page(api, app.clinic_id, "limit=1")["nextCursor"]
    assert cursor and "p2@" not in cursor
    # When the cursor is used with other filters, or is not a cursor at all
    for query in (f"limit=1&status=new&cursor={cursor}", "cursor=bm9wZQ", "cursor=%25%25"):
        status, _, answer = call(api, "GET", "/leads", app.clinic_id, query=query)
        # Then it is a clear 422, not a wrong page
        assert status == 422, (query, answer)
        assert "cursor" in answer["detail"]


def test_the_lifecycle_is_enforced_by_the_database_and_each_change_is_an_event(
    app: App, api: Any
) -> None:
    lead = add_lead(api, app.clinic_id, 1)
    path = f"/leads/{lead}"
    # When staff move it new -> contacted and assign it, in one PATCH
    status, _, answer = call(
        api,
        "PATCH",
        path,
        app.clinic_id,
        {"status": "contacted", "assignedTo": "staff-ann"},
        subject="staff-bob",
    )
    # Then both changed, each with its event naming who changed it
    assert status == 200, answer
    assert answer["data"]["status"] == "contacted" and answer["data"]["assignedTo"] == "staff-ann"
    assert answer["data"]["events"] == ["lead.status_changed", "lead.assigned"]
    found = events(app, "lead.status_changed", "lead.assigned")
    assert [(e["type"], e["leadId"], e["changedBy"]) for e in found] == [
        ("lead.status_changed", lead, "staff-bob"),
        ("lead.assigned", lead, "staff-bob"),
    ]
    assert (found[0]["from"], found[0]["to"], found[1]["assignedTo"]) == (
        "new",
        "contacted",
        "staff-ann",
    )
    # And the inbox filters by status and assignee
    assert [i["id"] for i in page(api, app.clinic_id, "status=contacted")["items"]] == [lead]
    assert [i["id"] for i in page(api, app.clinic_id, "assignedTo=staff-ann")["items"]] == [lead]
    assert page(api, app.clinic_id, "status=new")["items"] == []
    # When it is booked, then moved on again
    assert call(api, "PATCH", path, app.clinic_id, {"status": "booked"})[0] == 200
    for forbidden in ("lost", "new", "contacted"):
        status, _, answer = call(api, "PATCH", path, app.clinic_id, {"status": forbidden})
        # Then booked is final: a clear 409 that changes nothing and emits nothing
        assert status == 409, answer
        assert "booked" in answer["detail"]
    assert rows(app, "SELECT status FROM leads WHERE id = %s", lead) == [("booked",)]
    assert len(events(app, "lead.status_changed")) == 2
    # And a new lead cannot skip contacted
    fresh = add_lead(api, app.clinic_id, 2)
    status, _, answer = call(api, "PATCH", f"/leads/{fresh}", app.clinic_id, {"status": "lost"})
    assert status == 409 and "contacted" in answer["detail"]


def test_the_database_refuses_a_forbidden_move_whoever_writes(app: App) -> None:
    # Given a new lead written straight to the table
    lead = uuid.uuid4()
    with psycopg.connect(app.database_url) as conn:
        conn.execute(
            """INSERT INTO leads (id, clinic_id, source, consent, name_enc, email_enc, dek,
                                  kms_key_id)
               VALUES (%s, %s, 'web_form', true, '\\x00', '\\x00', '\\x00', 'k')""",
            (lead, app.clinic_id),
        )
    # When SQL (not the API) moves it from new to booked, or to an unknown status
    for target in ("booked", "archived"):
        refused = pytest.raises(psycopg.errors.CheckViolation)
        with psycopg.connect(app.database_url) as conn, refused:
            conn.execute("UPDATE leads SET status = %s WHERE id = %s", (target, lead))
    # Then it stays new; an allowed move is taken and stamped
    with psycopg.connect(app.database_url) as conn:
        conn.execute("UPDATE leads SET status = 'contacted' WHERE id = %s", (lead,))
    assert rows(
        app, "SELECT status, status_changed_at IS NOT NULL FROM leads WHERE id = %s", lead
    ) == [("contacted", True)]


def test_staff_notes_are_encrypted_and_a_patch_is_idempotent(app: App, api: Any) -> None:
    lead = add_lead(api, app.clinic_id, 1)
    path = f"/leads/{lead}"
    body = {"staffNotes": "called twice, prefers Tuesdays"}
    # When the same PATCH is sent twice with one Idempotency-Key
    first = call(api, "PATCH", path, app.clinic_id, body, **{"Idempotency-Key": "note-1"})
    second = call(api, "PATCH", path, app.clinic_id, body, **{"Idempotency-Key": "note-1"})
    # Then the retry answers the first result and changes nothing more
    assert first[0] == second[0] == 200
    assert second[1].get("idempotent-replayed") == "true"
    assert second[2]["data"] == first[2]["data"]
    assert len(events(app, "lead.notes_changed")) == 1
    # And the same key with another body is a clear 422
    status, _, answer = call(
        api, "PATCH", path, app.clinic_id, {"staffNotes": "other"}, **{"Idempotency-Key": "note-1"}
    )
    assert status == 422 and "Idempotency-Key" in answer["title"]
    # And the notes rest encrypted, are readable by staff, and are in no event or stored answer
    (stored,) = rows(app, "SELECT leads::text FROM leads WHERE id = %s", lead)[0]
    assert "Tuesdays" not in stored
    _, _, read = call(api, "GET", path, app.clinic_id)
    assert read["data"]["staffNotes"] == "called twice, prefers Tuesdays"
    dumped = json.dumps(rows(app, "SELECT payload FROM outbox")) + json.dumps(
        rows(app, "SELECT response FROM idempotency_keys")
    )
    assert "Tuesdays" not in dumped


def test_another_clinic_cannot_change_or_find_a_lead(app: App, api: Any) -> None:
    lead = add_lead(api, app.other_clinic_id, 1, phone="+44 20 7946 0000")
    # When clinic A patches B's lead or searches for its address
    status, _, _ = call(api, "PATCH", f"/leads/{lead}", app.clinic_id, {"status": "contacted"})
    found = page(api, app.clinic_id, "email=p1@example.org")["items"]
    # Then it is not found, and nothing changed
    assert status == 404 and found == []
    assert rows(app, "SELECT status FROM leads WHERE id = %s", lead) == [("new",)]
    assert events(app, "lead.status_changed") == []


@pytest.mark.parametrize(
    "body",
    [{}, {"status": None}, {"status": "archived"}, {"assignedTo": ""}, {"unknown": 1}],
    ids=["empty", "null-status", "unknown-status", "empty-assignee", "unknown-field"],
)
def test_a_bad_patch_is_a_422_and_changes_nothing(app: App, api: Any, body: Any) -> None:
    lead = add_lead(api, app.clinic_id, 1)
    status, _, answer = call(api, "PATCH", f"/leads/{lead}", app.clinic_id, body)
    assert status == 422, answer
    assert rows(app, "SELECT status, assigned_to FROM leads WHERE id = %s", lead) == [("new", None)]


def test_unassigning_is_an_event_too(app: App, api: Any) -> None:
    lead = add_lead(api, app.clinic_id, 1)
    call(api, "PATCH", f"/leads/{lead}", app.clinic_id, {"assignedTo": "staff-ann"})
    status, _, answer = call(api, "PATCH", f"/leads/{lead}", app.clinic_id, {"assignedTo": None})
    assert status == 200 and answer["data"]["assignedTo"] is None
    assigned = events(app, "lead.assigned")
    assert [(e["assignedTo"], e["previous"]) for e in assigned] == [
        ("staff-ann", None),
        (None, "staff-ann"),
    ]
    # And a PATCH that changes nothing emits nothing
    status, _, answer = call(api, "PATCH", f"/leads/{lead}", app.clinic_id, {"status": "new"})
    assert status == 200 and answer["data"]["events"] == []
    assert datetime.fromisoformat(answer["data"]["updatedAt"]).tzinfo is not None


def test_staff_notes_wait_on_kms_before_the_lead_is_locked_never_inside(
    app: App, api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from frontdesk.services import get_services

    # Given a lead whose data key this container no longer holds
    lead = add_lead(api, app.clinic_id, 1)
    cipher = get_services().cipher
    cipher.forget_keys()
    open_transactions: list[int] = []
    keys = cipher._keys
    decrypt = keys.decrypt_data_key

    def watched(encrypted: bytes) -> bytes:
        with psycopg.connect(app.database_url) as conn:
            found = conn.execute(
                """SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
                   AND application_name = 'frontdesk' AND xact_start IS NOT NULL"""
            ).fetchone()
        assert found is not None
        open_transactions.append(found[0])
        return decrypt(encrypted)

    monkeypatch.setattr(keys, "decrypt_data_key", watched)
    # When staff write notes on it
    status, _, answer = call(api, "PATCH", f"/leads/{lead}", app.clinic_id, {"staffNotes": "x"})
    # Then its key was fetched from KMS while no transaction of ours was open
    assert status == 200, answer
    assert open_transactions == [0]
