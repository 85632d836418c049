"""Envelope encryption of PII and HMAC blind indexes.

Each container asks KMS for a data key (AES-256) and reuses it for `max_age` seconds, so
KMS is called about once per container per five minutes, not once per field. A row stores
the KMS-encrypted data key and the KMS key id; each field stores nonce || ciphertext,
AES-256-GCM with the row id and field name as associated data, so a ciphertext cannot be
moved to another row or column unnoticed. Reading decrypts the data key through KMS once
and caches it by its encrypted form.

Blind indexes (HMAC-SHA256 under a separate secret key over a normalised value) let the
database find duplicates by email or phone without ever holding them in plaintext.
"""

from __future__ import annotations

import hmac
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from frontdesk.errors import ServiceUnavailable

if TYPE_CHECKING:
    from frontdesk.platform.aws import Aws

_NONCE_BYTES = 12


class KeyService(Protocol):
    """What envelope encryption needs from KMS (a fake stands in for it in unit tests)."""

    def generate_data_key(self) -> tuple[bytes, bytes, str]:
        """(plaintext key, encrypted key, KMS key id)."""
        ...

    def decrypt_data_key(self, encrypted_key: bytes) -> bytes: ...


class KmsKeyService:
    def __init__(self, aws: Aws, key_id: str) -> None:
        self._aws = aws
        self._key_id = key_id

    def generate_data_key(self) -> tuple[bytes, bytes, str]:
        answer = self._call("generate_data_key", KeyId=self._key_id, KeySpec="AES_256")
        return answer["Plaintext"], answer["CiphertextBlob"], str(answer["KeyId"])

    def decrypt_data_key(self, encrypted_key: bytes) -> bytes:
        answer = self._call("decrypt", CiphertextBlob=encrypted_key, KeyId=self._key_id)
        plaintext: bytes = answer["Plaintext"]
        return plaintext

    def _call(self, operation: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self._aws.client("kms"), operation)(**kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise ServiceUnavailable(
                f"the key service is unavailable ({type(exc).__name__})"
            ) from exc


@dataclass(frozen=True)
class DataKey:
    plaintext: bytes
    encrypted: bytes
    kms_key_id: str
    created: float


class EnvelopeCipher:
    """Encrypts and decrypts fields with cached data keys. Thread-safe."""

    def __init__(self, keys: KeyService, max_age_seconds: float = 300, max_cached: int = 256):
        self._keys = keys
        self._max_age = max_age_seconds
        self._max_cached = max_cached
        self._current: DataKey | None = None
        self._decrypted: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()
        self._lock = threading.Lock()

    def data_key(self, *, fresh_for: float = 0) -> DataKey:
        """The key to encrypt new rows with, renewed once it is `max_age` old, or would be
        within `fresh_for` seconds: called so before a transaction, the calls inside it find
        the key cached and never wait for KMS with the transaction open."""
        with self._lock:
            now = time.monotonic()
            renew_at = self._max_age - min(fresh_for, self._max_age / 2)
            if self._current is None or now - self._current.created >= renew_at:
                plaintext, encrypted, key_id = self._keys.generate_data_key()
                self._current = DataKey(plaintext, encrypted, key_id, now)
                self._remember(encrypted, plaintext, now)
            return self._current

    def forget_keys(self) -> None:
        """Drop every cached data key (a SnapStart snapshot must hold none)."""
        with self._lock:
            self._current = None
            self._decrypted.clear()

    def _remember(self, encrypted: bytes, plaintext: bytes, now: float) -> None:
        self._decrypted[encrypted] = (plaintext, now)
        self._decrypted.move_to_end(encrypted)
        while len(self._decrypted) > self._max_cached:
            self._decrypted.popitem(last=False)

    def _plaintext_key(self, encrypted: bytes) -> bytes:
        with self._lock:
            now = time.monotonic()
            hit = self._decrypted.get(encrypted)
            if hit is not None and now - hit[1] < self._max_age:
                return hit[0]
        plaintext = self._keys.decrypt_data_key(encrypted)
        with self._lock:
            self._remember(encrypted, plaintext, time.monotonic())
        return plaintext

    @staticmethod
    def encrypt(key: DataKey, value: str | None, aad: bytes) -> bytes | None:
        if value is None:
            return None
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + AESGCM(key.plaintext).encrypt(nonce, value.encode(), aad)

    @staticmethod
    def encryptor(key: DataKey) -> Callable[[str | None, bytes], bytes | None]:
        """`encrypt` for many fields under one key: the AES-GCM object is built once (bulk
        imports encrypt hundreds of thousands of fields)."""
        aes = AESGCM(key.plaintext)
        nonces: list[bytes] = []

        def encrypt(value: str | None, aad: bytes) -> bytes | None:
            if value is None:
                return None
            if not nonces:  # random nonces drawn 512 at a time: one syscall, not one each
                pool = os.urandom(_NONCE_BYTES * 512)
                nonces.extend(pool[i : i + _NONCE_BYTES] for i in range(0, len(pool), 12))
            nonce = nonces.pop()
            return nonce + aes.encrypt(nonce, value.encode(), aad)

        return encrypt

    def load_key(self, encrypted_key: bytes) -> None:
        """Decrypt a row's data key now (KMS, unless cached): a transaction that follows then
        encrypts under it (`encrypt_under`) without waiting on KMS."""
        self._plaintext_key(encrypted_key)

    def encrypt_under(self, encrypted_key: bytes, value: str | None, aad: bytes) -> bytes | None:
        """`encrypt` under a row's existing data key (a field changed later: every field of
        a row stays under the one key the row names)."""
        if value is None:
            return None
        nonce = os.urandom(_NONCE_BYTES)
        aes = AESGCM(self._plaintext_key(encrypted_key))
        return nonce + aes.encrypt(nonce, value.encode(), aad)

    def decrypt(self, encrypted_key: bytes, blob: bytes | None, aad: bytes) -> str | None:
        if blob is None:
            return None
        return self.decrypt_bytes(encrypted_key, blob, aad).decode()

    def decryptor(self, encrypted_key: bytes) -> Callable[[bytes | None, bytes], str | None]:
        """`decrypt` for many fields under one data key: the key is looked up and the
        AES-GCM object built once (a page of leads decrypts dozens of fields)."""
        aes = AESGCM(self._plaintext_key(encrypted_key))

        def decrypt(blob: bytes | None, aad: bytes) -> str | None:
            if blob is None:
                return None
            return aes.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], aad).decode()

        return decrypt

    @staticmethod
    def encrypt_bytes(key: DataKey, data: bytes, aad: bytes) -> bytes:
        """`encrypt` for bytes (a stored file's part): nonce || ciphertext."""
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + AESGCM(key.plaintext).encrypt(nonce, data, aad)

    def decrypt_bytes(self, encrypted_key: bytes, blob: bytes, aad: bytes) -> bytes:
        aes = AESGCM(self._plaintext_key(encrypted_key))
        return aes.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], aad)


def field_aad(table: str, row_id: object, field: str) -> bytes:
    return f"{table}:{row_id}:{field}".encode()


def normalise_email(email: str) -> str:
    return email.strip().lower()


def normalise_question(question: str) -> str:
    """Casefolded, whitespace runs collapsed to one space, trimmed."""
    return " ".join(question.casefold().split())


_NOT_DIGITS = re.compile(r"\D")


def normalise_phone(phone: str) -> str:
    """Digits only, keeping a leading + (so '+1 (555) 010-0000' == '+15550100000')."""
    phone = phone.strip()
    digits = _NOT_DIGITS.sub("", phone)
    return f"+{digits}" if phone.startswith("+") else digits


class BlindIndex:
    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("the blind index key must have at least 32 bytes")
        self._key = key

    def email(self, email: str | None) -> bytes | None:
        return None if email is None else self._mac("email", normalise_email(email))

    def phone(self, phone: str | None) -> bytes | None:
        return None if phone is None else self._mac("phone", normalise_phone(phone))

    def reply_question(self, clinic_id: object, question: str) -> bytes:
        """A staff question's MAC for the assistant's reply cache: per clinic, over the
        question casefolded with its whitespace collapsed (frontdesk.assistant.reply_cache)."""
        return self._mac("reply-question", f"{clinic_id}:{normalise_question(question)}")

    def _mac(self, kind: str, value: str) -> bytes:
        # hmac.digest: the one-shot C path, the same MAC as hmac.new(...).digest().
        return hmac.digest(self._key, f"{kind}:{value}".encode(), "sha256")
