"""Queue message parsing shared by the workers: a typed message, or a reason without values."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from frontdesk.errors import PermanentMessageError

M = TypeVar("M", bound=BaseModel)


def validation_reasons(exc: ValidationError) -> str:
    """Field locations and error types, never the values (a message may carry PII)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['type']}" for err in exc.errors()
    )


def parse_message(model: type[M], body: str, what: str) -> M:
    """The message `body` as `model`; a malformed one is a PermanentMessageError with a reason."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise PermanentMessageError(
            f"malformed {what} message ({validation_reasons(exc)})"
        ) from None
