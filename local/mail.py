"""The emails moto's SES accepted, read across processes from its data API."""

from __future__ import annotations

import json
import re
import urllib.request
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SentEmail:
    to: tuple[str, ...]
    template: str | None  # None for a plain SendEmail
    subject: str | None  # a plain email's subject
    data: dict[str, Any]  # a templated email's replacement data


def sent_emails(aws_endpoint_url: str) -> list[SentEmail]:
    """Every email sent so far, in order: plain sends and each destination of bulk sends."""
    url = f"{aws_endpoint_url}/moto-api/data.json"
    with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 - a local moto URL
        ses = json.load(answer).get("ses", {})
    emails = [
        SentEmail(tuple(m["destinations"].get("ToAddresses", [])), None, m["subject"], {})
        for m in ses.get("Message", [])
    ]
    for bulk in ses.get("BulkTemplateMessage", []):
        for destination in bulk["destinations"]:
            emails.append(
                SentEmail(
                    tuple(destination["Destination"].get("ToAddresses", [])),
                    bulk["template"],
                    None,
                    json.loads(destination.get("ReplacementTemplateData") or "{}"),
                )
            )
    return emails


def render(text: str, data: dict[str, Any]) -> str:
    """SES template placeholders ({{name}}) filled in, as SES would."""
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: str(data.get(m.group(1), "")), text)
