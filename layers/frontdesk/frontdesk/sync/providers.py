"""Provider adapters: what sync needs from a lead/booking provider, and the generic JSON one.

An adapter lists changes since a cursor and fetches one lead or booking. It makes plain
HTTP calls and never touches the database; rate limiting, retries and the circuit breaker
are the caller's (frontdesk.sync), so every adapter gets them the same way.

The generic JSON provider API (documented in README.md, faked by local/fake_provider.py):

    GET  {base}/v1/account                      200 {"id", "name"} | 401 bad credentials
    GET  {base}/v1/changes?since=CUR&limit=N    200 {"changes": [change], "nextCursor", "hasMore"}
    GET  {base}/v1/leads/{id}                   200 lead    | 404
    GET  {base}/v1/bookings/{id}                200 booking | 404
    change  = {"id", "type", "resource": "lead"|"booking", "resourceId", "occurredAt"}
    lead    = {"id", "name", "email", "phone", "notes", "consent", "updatedAt"}
    booking = {"id", "doctorId", "startsAt", "endsAt", "status": "booked"|"cancelled",
               "patient": {"name", "email", "phone"}, "updatedAt"}   (times ISO 8601 + offset)
    Authorization: Bearer <credentials.apiKey>; 429 with Retry-After when rate limited.

A webhook carries one change (the same `id` as in the change feed) and is signed with
`Webhook-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">`.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from frontdesk.errors import InvalidInput
from frontdesk.sync.egress import Egress, EgressRefused

Resource = Literal["lead", "booking"]
RESOURCES: tuple[Resource, ...] = ("lead", "booking")


class ProviderError(Exception):
    """Base of provider call failures."""


class ProviderUnavailable(ProviderError):
    """Timeout, connection error or 5xx: worth retrying later (counts for the breaker)."""


class ProviderRateLimited(ProviderError):
    """429: retry after the given seconds."""

    def __init__(self, retry_after_seconds: float) -> None:
        super().__init__(f"rate limited by the provider (retry after {retry_after_seconds:g} s)")
        self.retry_after_seconds = retry_after_seconds


class ProviderRejected(ProviderError):
    """The provider refused the request for good (bad credentials, malformed answer)."""


class ProviderNotFound(ProviderError):
    """The object does not exist (any more) at the provider."""


@dataclass(frozen=True)
class Change:
    id: str
    resource: Resource
    external_id: str
    type: str


@dataclass(frozen=True)
class ChangePage:
    changes: list[Change]
    next_cursor: str | None
    has_more: bool


@dataclass(frozen=True)
class ProviderLead:
    external_id: str
    name: str
    email: str | None
    phone: str | None
    notes: str | None
    consent: bool
    updated_at: datetime | None


@dataclass(frozen=True)
class ProviderBooking:
    """A booking as the provider sent it; sync checks the values (status, times, contact)."""

    external_id: str
    doctor_external_id: str
    starts_at: datetime
    ends_at: datetime
    status: str
    name: str
    email: str | None
    phone: str | None
    updated_at: datetime | None


class ProviderAdapter(Protocol):
    def validate(self) -> None:
        """Check the credentials; ProviderRejected when the provider refuses them."""
        ...

    def list_changes(self, cursor: str | None, limit: int) -> ChangePage: ...

    def fetch_lead(self, external_id: str) -> ProviderLead: ...

    def fetch_booking(self, external_id: str) -> ProviderBooking: ...


class GenericJsonAdapter:
    """The reference adapter: the generic JSON provider API above, over urllib, calling only
    where `egress` allows (public addresses, checked after DNS resolution)."""

    def __init__(
        self,
        base_url: str,
        credentials: dict[str, Any],
        timeout_seconds: float,
        egress: Egress,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._api_key = str(credentials.get("apiKey", ""))
        self._timeout = timeout_seconds
        self._egress = egress
        self._opener = egress.opener()

    def validate(self) -> None:
        self._get("/v1/account")

    def list_changes(self, cursor: str | None, limit: int) -> ChangePage:
        query = {"limit": str(limit)}
        if cursor:
            query["since"] = cursor
        answer = self._get("/v1/changes?" + urllib.parse.urlencode(query))
        try:
            changes = [
                Change(
                    id=str(item["id"]),
                    resource=_resource(item["resource"]),
                    external_id=str(item["resourceId"]),
                    type=str(item.get("type", "")),
                )
                for item in answer["changes"]
            ]
            next_cursor = answer.get("nextCursor")
            return ChangePage(
                changes,
                str(next_cursor) if next_cursor is not None else cursor,
                bool(answer.get("hasMore", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProviderRejected(f"malformed change page ({type(exc).__name__})") from None

    def fetch_lead(self, external_id: str) -> ProviderLead:
        item = self._get(f"/v1/leads/{urllib.parse.quote(external_id, safe='')}")
        try:
            updated = item.get("updatedAt")
            return ProviderLead(
                external_id=str(item["id"]),
                name=str(item["name"]),
                email=_optional(item.get("email")),
                phone=_optional(item.get("phone")),
                notes=_optional(item.get("notes")),
                consent=bool(item.get("consent", False)),
                updated_at=datetime.fromisoformat(updated) if updated else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProviderRejected(f"malformed lead ({type(exc).__name__})") from None

    def fetch_booking(self, external_id: str) -> ProviderBooking:
        item = self._get(f"/v1/bookings/{urllib.parse.quote(external_id, safe='')}")
        try:
            patient = item["patient"]
            updated = item.get("updatedAt")
            return ProviderBooking(
                external_id=str(item["id"]),
                doctor_external_id=str(item["doctorId"]),
                starts_at=datetime.fromisoformat(str(item["startsAt"])),
                ends_at=datetime.fromisoformat(str(item["endsAt"])),
                status=str(item.get("status", "booked")),
                name=str(patient.get("name") or ""),
                email=_optional(patient.get("email")),
                phone=_optional(patient.get("phone")),
                updated_at=datetime.fromisoformat(updated) if updated else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProviderRejected(f"malformed booking ({type(exc).__name__})") from None

    def _get(self, path: str) -> dict[str, Any]:
        url = self._base + path
        try:
            self._egress.check_url(url)  # the scheme (a row saved before today's rule too)
        except InvalidInput as exc:
            raise ProviderRejected(exc.detail) from None
        request = urllib.request.Request(  # noqa: S310 (the scheme is checked above)
            url,
            headers={"Authorization": f"Bearer {self._api_key}", "Accept": "application/json"},
        )
        try:
            with self._opener.open(request, timeout=self._timeout) as answer:
                body = answer.read(1024 * 1024 + 1)
        except EgressRefused as exc:
            raise ProviderRejected(str(exc)) from None
        except urllib.error.HTTPError as exc:
            raise _http_error(exc) from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise ProviderUnavailable(f"provider unreachable ({type(exc).__name__})") from None
        if len(body) > 1024 * 1024:
            raise ProviderRejected("provider answer over 1 MiB")
        try:
            data = json.loads(body)
        except ValueError:
            raise ProviderRejected("provider answer is not JSON") from None
        if not isinstance(data, dict):
            raise ProviderRejected("provider answer is not a JSON object")
        return data


def _http_error(exc: urllib.error.HTTPError) -> ProviderError:
    status = exc.code
    exc.close()
    if status == 429:
        try:
            retry_after = float(exc.headers.get("Retry-After", "1"))
        except ValueError:
            retry_after = 1.0
        return ProviderRateLimited(max(0.0, retry_after))
    if status == 404:
        return ProviderNotFound("not found at the provider")
    if status in (401, 403):
        return ProviderRejected(f"the provider refused the credentials ({status})")
    if status >= 500 or status == 408:
        return ProviderUnavailable(f"provider error {status}")
    return ProviderRejected(f"provider answered {status}")


def _resource(value: Any) -> Resource:
    if value not in RESOURCES:
        raise ValueError("unknown resource")
    resource: Resource = value
    return resource


def _optional(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


KINDS = ("generic",)


def adapter_for(
    kind: str, base_url: str, credentials: dict[str, Any], timeout_seconds: float, egress: Egress
) -> ProviderAdapter:
    if kind == "generic":
        return GenericJsonAdapter(base_url, credentials, timeout_seconds, egress)
    raise ProviderRejected(f"no adapter for provider {kind!r}")
