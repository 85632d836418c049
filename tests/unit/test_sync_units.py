"""Webhook signatures, CSV windows and external lead checks: pure functions, no I/O."""

from __future__ import annotations

import pytest

from frontdesk.errors import InvalidInput, Unauthorized
from frontdesk.leads.external import check_external
from frontdesk.leads.imports import check_header, parse_window
from frontdesk.platform.signature import check_timestamp, parse_signature, sign, verify
from frontdesk.sync.egress import Egress
from frontdesk.sync.webhooks import parse_delivery

SECRET = b"whsec_unit_test_secret"
BODY = b'{"id":"chg_1","type":"lead.created","resource":"lead","resourceId":"L-1"}'


def test_a_signature_made_with_the_secret_verifies() -> None:
    # Given a body signed at t=1700000000 / When its header is parsed and verified
    signature = parse_signature(sign(SECRET, 1_700_000_000, BODY))
    # Then it passes (no exception) and carries the timestamp
    verify(SECRET, signature, BODY)
    assert signature.timestamp == 1_700_000_000


@pytest.mark.parametrize(
    ("secret", "body"),
    [(b"another secret", BODY), (SECRET, BODY.replace(b"L-1", b"L-2")), (SECRET, BODY + b" ")],
)
def test_a_wrong_secret_or_a_changed_body_is_refused(secret: bytes, body: bytes) -> None:
    signature = parse_signature(sign(secret, 1_700_000_000, BODY))
    with pytest.raises(Unauthorized, match="does not match"):
        verify(SECRET, signature, body)


def test_the_timestamp_is_signed_too() -> None:
    # Given a valid signature whose t= was moved to look fresh
    header = sign(SECRET, 1_700_000_000, BODY).replace("t=1700000000", "t=1700000100")
    # Then it no longer verifies
    with pytest.raises(Unauthorized):
        verify(SECRET, parse_signature(header), BODY)


def test_any_of_several_v1_signatures_may_match_during_secret_rotation() -> None:
    old = sign(b"old secret", 1_700_000_000, BODY).split(",")[1]
    header = sign(SECRET, 1_700_000_000, BODY) + "," + old + ",v0=ignored"
    verify(SECRET, parse_signature(header), BODY)


@pytest.mark.parametrize(
    "header",
    [None, "", "v1=abcd", "t=1700000000", "t=12x,v1=ab", "t=1,v1=nothex", "t=1,t=2,v1=ab", "junk"],
)
def test_malformed_headers_are_refused(header: str | None) -> None:
    with pytest.raises(Unauthorized):
        parse_signature(header)


@pytest.mark.parametrize(
    ("age", "accepted"), [(0, True), (300, True), (-300, True), (301, False), (-301, False)]
)
def test_timestamps_within_300_seconds_either_way_are_accepted(age: int, accepted: bool) -> None:
    # Given a signature made `age` seconds before now (negative: in the future)
    signature = parse_signature(sign(SECRET, 1_700_000_000, BODY))
    now = 1_700_000_000 + age
    # When its timestamp is checked / Then only |age| <= 300 passes
    if accepted:
        check_timestamp(signature, now=now, tolerance_seconds=300)
    else:
        with pytest.raises(Unauthorized, match="too old" if age > 0 else "future"):
            check_timestamp(signature, now=now, tolerance_seconds=300)


@pytest.mark.parametrize(
    "body",
    [b"[]", b"not json", b'{"id": "x"}', b'{"id":"x","resource":"invoice","resourceId":"1"}'],
)
def test_a_signed_body_without_the_delivery_fields_is_invalid(body: bytes) -> None:
    with pytest.raises(InvalidInput):
        parse_delivery(body)


def test_csv_header_names_known_columns_and_a_way_to_reach_the_person() -> None:
    assert check_header(b"Name, Email ,consent\nA,b@c.de,yes\n") == (
        ["name", "email", "consent"],
        len(b"Name, Email ,consent\n"),
    )
    for bad in (b"name,email", b"name,notes\n", b"name,email,ssn\n", b"name,email,email\n"):
        with pytest.raises(InvalidInput):
            check_header(bad)


def test_a_window_stops_before_a_record_cut_off_by_its_end() -> None:
    # Given a window that ends inside a quoted field spanning two lines
    data = b'Ada,ada@example.org,\nGrace,grace@example.org,"called\ntwice"\n'
    window = data[: data.index(b"twice")]
    columns = ["name", "email", "notes"]
    # When it is parsed as a window in the middle of the file
    parsed = parse_window(window, at_eof=False, columns=columns, first_line=2)
    # Then only the first record is taken, and the next window starts at the second
    assert [row[:3] for row in parsed.rows] == [(2, "Ada", "ada@example.org")]
    assert parsed.consumed == len(b"Ada,ada@example.org,\n") and parsed.lines == 1
    # When the whole file is parsed / Then the multi-line record is one row, at its first line
    whole = parse_window(data, at_eof=True, columns=columns, first_line=2)
    assert [(row[0], row[1], row[4]) for row in whole.rows] == [
        (2, "Ada", None),
        (3, "Grace", "called\ntwice"),
    ]
    assert whole.consumed == len(data) and whole.lines == 3


def test_a_window_reports_bad_rows_by_line_without_their_values() -> None:
    data = b"Ada,ada@example.org,yes\n\nBob,bob-at-example,no\nCy,,maybe\nDee,d@e.org\n"
    parsed = parse_window(data, at_eof=True, columns=["name", "email", "consent"], first_line=2)
    assert [row[0] for row in parsed.rows] == [2]
    assert parsed.errors == [
        (4, "email: not an email address"),
        (5, "give an email, a phone number, or both"),
        (6, "expected 3 fields, found 2"),
    ]
    assert all("bob" not in reason for _, reason in parsed.errors)


def test_external_leads_follow_the_web_form_rules() -> None:
    assert check_external(" Ada ", "ADA@example.org", None, "", "Yes") == (
        "Ada",
        "ADA@example.org",
        None,
        None,
        True,
    )
    assert check_external("Ada", None, "12-34", None, True) == "phone: not a phone number"
    assert check_external("", "a@b.co", None, None, True).startswith("name")
    assert check_external("Ada", "a@b.co", None, None, "perhaps").startswith("consent")


LOCAL = Egress.of(True, ["127.0.0.1"])  # make dev: the fake provider on loopback, over http


@pytest.mark.parametrize(
    ("url", "egress", "ok"),
    [
        ("https://api.provider.example/", Egress(), True),
        ("https://93.184.215.14/v1", Egress(), True),
        ("http://127.0.0.1:8090", LOCAL, True),
        ("http://127.0.0.1:8090", Egress(allow_http=True), False),
        ("http://api.provider.example/", Egress(), False),
        ("https://user:pw@api.provider.example/", Egress(), False),
        ("ftp://api.provider.example/", LOCAL, False),
        ("https://[::1", Egress(), False),
        ("https://api.provider.example:99999/", Egress(), False),
        ("https://api.provider.example:port/", Egress(), False),
        ("https://äpi.example/", Egress(), False),
        # The SSRF guard: no address that is not public, however it is spelt
        ("https://169.254.169.254/latest/meta-data/", Egress(), False),
        ("https://127.0.0.1/", Egress(), False),
        ("https://10.0.0.5/", Egress(), False),
        ("https://172.16.3.4/", Egress(), False),
        ("https://192.168.1.1/", Egress(), False),
        ("https://100.64.0.1/", Egress(), False),
        ("https://0.0.0.0/", Egress(), False),
        ("https://[::1]/", Egress(), False),
        ("https://[fd00:ec2::254]/", Egress(), False),
        ("https://[fe80::1]/", Egress(), False),
        ("https://[::ffff:169.254.169.254]/", Egress(), False),
        ("https://[64:ff9b::a9fe:a9fe]/", Egress(), False),
        ("https://2130706433/", Egress(), False),
        ("https://0x7f.1/", Egress(), False),
        ("https://127.1/", Egress(), False),
        ("https://localhost/", Egress(), False),
        ("https://metadata.google.internal/", Egress(), False),
        ("https://printer.local/", Egress(), False),
        ("https://db/", Egress(), False),
        ("https://127.0.0.1./", Egress(), False),
    ],
)
def test_provider_base_urls_are_https_to_public_hosts_without_credentials(
    url: str, egress: Egress, ok: bool
) -> None:
    # Given a base URL an admin typed / When it is checked / Then only sane ones pass
    if ok:
        egress.check_url(url)
    else:
        with pytest.raises(InvalidInput):
            egress.check_url(url)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_call_to_a_host_resolving_inside_is_refused_before_connecting(
    scheme: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a provider host that resolves to the metadata service (or to several inside
    # addresses), and sockets that must not be opened
    import socket

    from frontdesk.sync.providers import GenericJsonAdapter, ProviderRejected

    def getaddrinfo(host: str, port: int, *args: object, **kwargs: object) -> list[object]:
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", port)),
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fd00:ec2::254", port, 0, 0)),
        ]

    def no_socket(*args: object, **kwargs: object) -> None:
        raise AssertionError("a socket was opened")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", no_socket)
    adapter = GenericJsonAdapter(
        f"{scheme}://provider.example", {"apiKey": "k"}, 1.0, Egress(allow_http=True)
    )
    # When the worker calls it / Then it is refused, saying why, and nothing connected
    with pytest.raises(ProviderRejected, match="public"):
        adapter.validate()
