"""Value types shared by every feature: contact fields, labels, timestamps, API models.

One definition each, so a name is checked the same way on a lead, a patient and a doctor.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated
from uuid import UUID

from pydantic import BaseModel, ConfigDict, PlainSerializer, StringConstraints, WithJsonSchema
from pydantic.alias_generators import to_camel

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Email = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"),
]
Phone = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=32, pattern=r"^\+?[0-9 ()\-.]+$")
]
Source = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_\-]{0,39}$")]
Notes = Annotated[str, StringConstraints(strip_whitespace=True, max_length=2000)]

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
