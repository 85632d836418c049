"""Value types shared by every feature: contact fields, labels, timestamps, API models.

One definition each, so a name is checked the same way on a lead, a patient and a doctor.

One rule for every text a client sends (the API's bodies, CSV rows, a provider's answers):
no control characters, never a NUL, nor half of a surrogate pair (neither survives the way
to PostgreSQL or to UTF-8). A single-line field (a name, an address, a title) takes no line
breaks or tabs either; a multi-line one (notes, a question) does. Pydantic models get it
through `SingleLine` / `MultiLine`, hand-written checks (CSV rows, provider data) through
`text_problem`; a refused value is a 422 naming the field, never the value.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    PlainSerializer,
    StringConstraints,
    WithJsonSchema,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

# C0 and C1 controls (with DEL) and lone surrogates; the multi-line rule lets \t \n \r pass.
_NOT_SINGLE_LINE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_NOT_MULTI_LINE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
SINGLE_LINE_RULE = "no control characters (a NUL, a line break, a tab) are allowed"
MULTI_LINE_RULE = "no control characters (a NUL) are allowed; line breaks and tabs are"


def text_problem(value: str, *, multiline: bool = False) -> str | None:
    """What breaks the text rule in `value` (a phrase naming no character of it), or None."""
    if multiline:
        return None if _NOT_MULTI_LINE.search(value) is None else MULTI_LINE_RULE
    return None if _NOT_SINGLE_LINE.search(value) is None else SINGLE_LINE_RULE


def _single_line(value: str) -> str:
    if _NOT_SINGLE_LINE.search(value) is not None:
        raise PydanticCustomError("text_control_character", SINGLE_LINE_RULE)
    return value


def _multi_line(value: str) -> str:
    if _NOT_MULTI_LINE.search(value) is not None:
        raise PydanticCustomError("text_control_character", MULTI_LINE_RULE)
    return value


SingleLine = AfterValidator(_single_line)
MultiLine = AfterValidator(_multi_line)

Name = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), SingleLine
]
Email = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"),
    SingleLine,
]
Phone = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=32, pattern=r"^\+?[0-9 ()\-.]+$"),
    SingleLine,
]
Source = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_\-]{0,39}$")]
Notes = Annotated[str, StringConstraints(strip_whitespace=True, max_length=2000), MultiLine]

# A timestamp as the API shows it: ISO 8601 with its UTC offset (datetime.isoformat()).
Timestamp = Annotated[
    datetime,
    PlainSerializer(datetime.isoformat, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]

PHONE_DIGITS = re.compile(r"\d")
MIN_PHONE_DIGITS = 5


def phone_digits_ok(phone: str) -> bool:
    return len(PHONE_DIGITS.findall(phone)) >= MIN_PHONE_DIGITS


class ApiModel(BaseModel):
    """A model the API answers with: snake_case in Python, camelCase on the wire."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        frozen=True,
    )


class Created(ApiModel):
    """The answer of a create that has nothing more to say than the new id."""

    id: UUID
