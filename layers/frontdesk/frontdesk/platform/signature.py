"""Signed webhooks, one shape both ways: providers sign what they send us
(frontdesk.sync.webhooks verifies it) and we sign what we send a clinic's endpoints
(frontdesk.webhooks.delivery), so a receiver verifies ours with this same code.

Header (Stripe-style): `Webhook-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>]` where
v1 = HMAC-SHA256(secret, "<t>." + raw body). Several v1 values let a sender sign with an
old and a new secret while rotating. The timestamp must be within the tolerance in either
direction (a replay of an old message is refused); the comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from frontdesk.errors import Unauthorized

SIGNATURE_HEADER = "Webhook-Signature"
_MAX_HEADER_LENGTH = 1024


@dataclass(frozen=True)
class Signature:
    timestamp: int
    signatures: tuple[bytes, ...]


def parse_signature(header: str | None) -> Signature:
    """`t=...,v1=...`: Unauthorized when absent or malformed (unknown schemes are ignored)."""
    if not header or len(header) > _MAX_HEADER_LENGTH:
        raise Unauthorized(f"a {SIGNATURE_HEADER} header is required")
    timestamp: int | None = None
    signatures: list[bytes] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise Unauthorized(f"malformed {SIGNATURE_HEADER} header")
        if key == "t":
            if timestamp is not None or not value.isascii() or not value.isdigit():
                raise Unauthorized(f"malformed {SIGNATURE_HEADER} timestamp")
            timestamp = int(value)
        elif key == "v1":
            try:
                signatures.append(bytes.fromhex(value))
            except ValueError:
                raise Unauthorized(f"malformed {SIGNATURE_HEADER} signature") from None
    if timestamp is None or not signatures:
        raise Unauthorized(f"{SIGNATURE_HEADER} needs t= and v1=")
    return Signature(timestamp, tuple(signatures))


def new_secret() -> str:
    """A signing secret we generate (a client never chooses one): a provider account's
    webhook secret, an outbound endpoint's."""
    return "whsec_" + secrets.token_urlsafe(32)


def sign(secret: bytes, timestamp: int, body: bytes, *also: bytes) -> str:
    """The header value for `body` signed at `timestamp` (a provider's, ours to a clinic's
    endpoint; the fake provider and tests use it too); with a v1= signature per secret in
    `also` after the first (a secret being rotated out)."""
    macs = [_mac(key, timestamp, body).hex() for key in (secret, *also)]
    return ",".join([f"t={timestamp}", *(f"v1={mac}" for mac in macs)])


def _mac(secret: bytes, timestamp: int, body: bytes) -> bytes:
    return hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).digest()


def check_timestamp(signature: Signature, *, now: float, tolerance_seconds: int) -> None:
    age = now - signature.timestamp
    if age > tolerance_seconds:
        raise Unauthorized("the webhook timestamp is too old")
    if age < -tolerance_seconds:
        raise Unauthorized("the webhook timestamp is in the future")


def verify(secret: bytes, signature: Signature, body: bytes) -> None:
    expected = _mac(secret, signature.timestamp, body)
    # compare_digest against every candidate, without stopping early.
    matched = False
    for candidate in signature.signatures:
        matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise Unauthorized("the webhook signature does not match")
