"""Envelope encryption and blind indexes, with a fake KMS behind the KeyService interface."""

from __future__ import annotations

import os

import pytest
from cryptography.exceptions import InvalidTag

from frontdesk.platform.crypto import BlindIndex, EnvelopeCipher, field_aad, normalise_phone


class FakeKeyService:
    """Wraps data keys with a local AES key instead of KMS; counts calls."""

    def __init__(self) -> None:
        self.generated = 0
        self.decrypted = 0
        self._wrapping = {}

    def generate_data_key(self) -> tuple[bytes, bytes, str]:
        self.generated += 1
        plaintext, encrypted = os.urandom(32), os.urandom(48)
        self._wrapping[encrypted] = plaintext
        return plaintext, encrypted, "fake-key"

    def decrypt_data_key(self, encrypted_key: bytes) -> bytes:
        self.decrypted += 1
        return self._wrapping[encrypted_key]


def test_round_trip_and_data_key_reuse() -> None:
    # Given a cipher with a five-minute data key
    keys = FakeKeyService()
    cipher = EnvelopeCipher(keys, max_age_seconds=300)
    # When two values are encrypted
    key = cipher.data_key()
    a = cipher.encrypt(key, "Ada Lovelace", field_aad("leads", 1, "name"))
    b = cipher.encrypt(cipher.data_key(), "ada@example.com", field_aad("leads", 1, "email"))
    # Then one data key served both, nothing is plaintext, and both decrypt
    assert keys.generated == 1
    assert a is not None and b"Ada" not in a
    assert cipher.decrypt(key.encrypted, a, field_aad("leads", 1, "name")) == "Ada Lovelace"
    assert cipher.decrypt(key.encrypted, b, field_aad("leads", 1, "email")) == "ada@example.com"
    assert keys.decrypted == 0  # the cipher remembers the key it generated


def test_nonces_differ_for_the_same_value() -> None:
    cipher = EnvelopeCipher(FakeKeyService())
    key = cipher.data_key()
    assert cipher.encrypt(key, "same", b"x") != cipher.encrypt(key, "same", b"x")


def test_ciphertext_moved_to_another_row_fails() -> None:
    cipher = EnvelopeCipher(FakeKeyService())
    key = cipher.data_key()
    blob = cipher.encrypt(key, "secret", field_aad("leads", 1, "email"))
    with pytest.raises(InvalidTag):
        cipher.decrypt(key.encrypted, blob, field_aad("leads", 2, "email"))


def test_data_key_renewed_after_max_age() -> None:
    keys = FakeKeyService()
    cipher = EnvelopeCipher(keys, max_age_seconds=0.0001)
    first = cipher.data_key()
    import time

    time.sleep(0.001)
    assert cipher.data_key() != first
    assert keys.generated == 2


def test_a_key_fetched_fresh_before_a_transaction_serves_the_calls_inside_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    from frontdesk.platform import crypto

    # Given a cipher whose five-minute data key is four and a half minutes old
    keys = FakeKeyService()
    cipher = EnvelopeCipher(keys, max_age_seconds=300)
    old = cipher.data_key()
    later = time.monotonic() + 270
    monkeypatch.setattr(crypto.time, "monotonic", lambda: later)
    # When a write asks for a key fresh for another minute before its transaction
    fresh = cipher.data_key(fresh_for=60)
    # Then it is renewed there, and the call inside the transaction finds it cached
    assert fresh != old and keys.generated == 2
    assert cipher.data_key() is fresh and keys.generated == 2


def test_a_margin_longer_than_the_key_lives_never_renews_on_every_call() -> None:
    keys = FakeKeyService()
    cipher = EnvelopeCipher(keys, max_age_seconds=30)
    first = cipher.data_key(fresh_for=60)
    assert cipher.data_key(fresh_for=60) is first and keys.generated == 1


def test_decrypting_another_containers_rows_asks_kms_once() -> None:
    keys = FakeKeyService()
    writer = EnvelopeCipher(keys)
    key = writer.data_key()
    blobs = [writer.encrypt(key, f"v{i}", b"aad") for i in range(5)]
    reader = EnvelopeCipher(keys)
    assert [reader.decrypt(key.encrypted, blob, b"aad") for blob in blobs] == [
        f"v{i}" for i in range(5)
    ]
    assert keys.decrypted == 1


def test_blind_index_normalises_and_separates_kinds() -> None:
    index = BlindIndex(b"k" * 32)
    assert index.email(" Ada@Example.COM ") == index.email("ada@example.com")
    assert index.phone("+1 (555) 010-0000") == index.phone("+15550100000")
    assert index.phone("15550100000") != index.phone("+15550100000")
    assert index.email("1") != index.phone("1")
    assert index.email(None) is None
    assert normalise_phone(" 030 1234-56 ") == "030123456"


def test_blind_index_refuses_short_keys() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        BlindIndex(b"short")


def test_a_field_changed_later_stays_under_the_rows_key_and_a_decryptor_opens_many() -> None:
    # Given a row's data key, known to the cipher only by its encrypted form (a new container)
    keys = FakeKeyService()
    writer = EnvelopeCipher(keys)
    key = writer.data_key()
    reader = EnvelopeCipher(keys)
    # When a field is encrypted later under that key (staff notes), and read back in bulk
    notes = reader.encrypt_under(key.encrypted, "call back", field_aad("leads", 1, "notes"))
    name = writer.encrypt(key, "Ada", field_aad("leads", 1, "name"))
    decrypt = reader.decryptor(key.encrypted)
    # Then both open with one key lookup, None stays None, and a moved field is refused
    assert notes is not None and b"call back" not in notes
    assert decrypt(notes, field_aad("leads", 1, "notes")) == "call back"
    assert decrypt(name, field_aad("leads", 1, "name")) == "Ada"
    assert decrypt(None, field_aad("leads", 1, "phone")) is None
    assert reader.encrypt_under(key.encrypted, None, b"x") is None
    assert keys.decrypted == 1
    with pytest.raises(InvalidTag):
        decrypt(notes, field_aad("leads", 2, "notes"))
