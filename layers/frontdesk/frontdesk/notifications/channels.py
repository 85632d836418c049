"""How notifications leave: email through SES, SMS through SNS, behind small interfaces
(fakes stand in for them in unit tests). Each answers per message: the provider's id, or
the error, transient (retry later) or permanent (retrying cannot help)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from frontdesk.platform.aws import Aws

SES_BULK_LIMIT = 50  # destinations per SendBulkTemplatedEmail call


class TransientDeliveryError(Exception):
    """Worth retrying: the message fails and SQS redelivers it after the visibility timeout."""


class PermanentDeliveryError(Exception):
    """Retrying cannot help (a rejected address): the job fails at once."""


@dataclass(frozen=True)
class Email:
    to: str
    data: dict[str, str]  # the template's placeholders


class Mailer(Protocol):
    def send_templated(
        self, *, sender: str, template: str, emails: Sequence[Email]
    ) -> list[str | Exception]:
        """Send each email; per email, the provider's message id or the error."""
        ...


class SesMailer:
    """SES SendBulkTemplatedEmail: one call for up to 50 emails, a status for each."""

    def __init__(self, aws: Aws) -> None:
        self._aws = aws

    _PERMANENT = frozenset(
        {
            "MessageRejected",
            "MailFromDomainNotVerified",
            "MailFromDomainNotVerifiedException",
            "InvalidParameterValue",
            "TemplateDoesNotExist",
            "InvalidTemplate",
            "AccountSendingPausedException",
        }
    )

    def send_templated(
        self, *, sender: str, template: str, emails: Sequence[Email]
    ) -> list[str | Exception]:
        results: list[str | Exception] = []
        for start in range(0, len(emails), SES_BULK_LIMIT):
            results += self._send_chunk(sender, template, emails[start : start + SES_BULK_LIMIT])
        return results

    def _send_chunk(
        self, sender: str, template: str, emails: Sequence[Email]
    ) -> list[str | Exception]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = self._aws.client("ses").send_bulk_templated_email(
                Source=sender,
                Template=template,
                DefaultTemplateData="{}",
                Destinations=[
                    {
                        "Destination": {"ToAddresses": [email.to]},
                        "ReplacementTemplateData": json.dumps(email.data),
                    }
                    for email in emails
                ],
            )
        except ClientError as exc:
            error = self._error(exc.response.get("Error", {}).get("Code", "Unknown"))
            return [error] * len(emails)
        except BotoCoreError as exc:
            unreachable = TransientDeliveryError(f"SES unreachable ({type(exc).__name__})")
            return [unreachable] * len(emails)
        return [
            status["MessageId"]
            if status.get("MessageId") and status.get("Status", "Success") == "Success"
            else self._error(status)
            for status in answer["Status"]
        ]

    def _error(self, status: Mapping[str, Any] | str) -> Exception:
        code = status if isinstance(status, str) else str(status.get("Status", "Unknown"))
        if code in self._PERMANENT:
            return PermanentDeliveryError(f"SES refused the email ({code})")
        return TransientDeliveryError(f"SES error ({code})")


class SmsSender(Protocol):
    def send(self, phone: str, message: str) -> str | Exception:
        """The provider's message id, or the error."""
        ...


class SnsSms:
    """SNS Publish to a phone number (transactional SMS)."""

    def __init__(self, aws: Aws) -> None:
        self._aws = aws

    _PERMANENT = frozenset({"InvalidParameter", "InvalidParameterValue", "OptedOut"})

    def send(self, phone: str, message: str) -> str | Exception:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = self._aws.client("sns").publish(
                PhoneNumber=phone,
                Message=message,
                MessageAttributes={
                    "AWS.SNS.SMS.SMSType": {"DataType": "String", "StringValue": "Transactional"}
                },
            )
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "Unknown"))
            if code in self._PERMANENT:
                return PermanentDeliveryError(f"SNS refused the SMS ({code})")
            return TransientDeliveryError(f"SNS error ({code})")
        except BotoCoreError as exc:
            return TransientDeliveryError(f"SNS unreachable ({type(exc).__name__})")
        return str(answer["MessageId"])
