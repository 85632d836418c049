"""Domain exceptions. The web layer maps them to problem+json in one place."""

from __future__ import annotations

from typing import Any


class FrontdeskError(Exception):
    """Base of every error the domain raises on purpose."""

    status = 500
    title = "Internal error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def problem_fields(self) -> dict[str, Any]:
        """Extra members of the problem+json body (RFC 9457 extensions); none by default."""
        return {}


class Problem(FrontdeskError):
    """An error with any status, for the web layer's own refusals (405, unknown route)."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title


class NotFound(FrontdeskError):
    status = 404
    title = "Not found"


class Unauthorized(FrontdeskError):
    status = 401
    title = "Unauthorized"


class Forbidden(FrontdeskError):
    status = 403
    title = "Forbidden"


class Conflict(FrontdeskError):
    status = 409
    title = "Conflict"


class SlotTaken(Conflict):
    """The doctor already has an active appointment overlapping the requested time."""

    title = "Slot already booked"

    def __init__(self, detail: str, *, doctor_id: str, starts_at: str, ends_at: str) -> None:
        super().__init__(detail)
        self.slot = {"doctorId": doctor_id, "startsAt": starts_at, "endsAt": ends_at}

    def problem_fields(self) -> dict[str, Any]:
        return {"conflictingSlot": self.slot}


class PayloadTooLarge(FrontdeskError):
    status = 413
    title = "Payload too large"


class InvalidInput(FrontdeskError):
    status = 422
    title = "Invalid input"


class IdempotencyKeyReused(FrontdeskError):
    status = 422
    title = "Idempotency-Key reused with a different request"


class ServiceUnavailable(FrontdeskError):
    """A dependency (the database, KMS) cannot be reached right now: retry later."""

    status = 503
    title = "Service unavailable"

    def __init__(self, detail: str, retry_after_seconds: int = 5) -> None:
        super().__init__(detail)
        self.retry_after_seconds = retry_after_seconds


class TooManyRequests(FrontdeskError):
    """A budget or rate limit is used up: retry after the given number of seconds."""

    status = 429
    title = "Too many requests"

    def __init__(self, detail: str, retry_after_seconds: int) -> None:
        super().__init__(detail)
        self.retry_after_seconds = max(1, retry_after_seconds)


class PermanentMessageError(FrontdeskError):
    """A queue message that can never succeed (malformed, unknown kind): retrying won't help."""

    status = 422
    title = "Unprocessable message"
