"""Lead input rules (pydantic), no I/O."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from frontdesk.leads.intake import LeadIn


def lead(**fields: object) -> dict[str, object]:
    return {"name": "Ada", "email": "ada@example.com", "consent": True, **fields}


def test_a_valid_lead_is_normalised() -> None:
    parsed = LeadIn.model_validate(lead(name="  Ada  ", phone=" +1 555 0100 "))
    assert parsed.name == "Ada" and parsed.phone == "+1 555 0100"
    assert parsed.source == "web_form"


@pytest.mark.parametrize(
    "fields",
    [
        {"email": None},  # neither email nor phone
        {"email": "not-an-email"},
        {"phone": "12", "email": None},
        {"phone": "call me"},
        {"name": ""},
        {"name": "x" * 201},
        {"consent": "yes"},  # strict boolean
        {"source": "Bad Source!"},
        {"notes": "x" * 2001},
        {"unexpected": 1},  # unknown fields are rejected
    ],
)
def test_invalid_leads_are_rejected(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        LeadIn.model_validate(lead(**fields))


def test_consent_is_required() -> None:
    data = lead()
    del data["consent"]
    with pytest.raises(ValidationError):
        LeadIn.model_validate(data)
