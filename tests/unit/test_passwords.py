"""Unit tests for cim.core.passwords: salted scrypt password records."""

from __future__ import annotations

import base64

import pytest

from cim.core.passwords import ScryptParams, hash_password, verify_password

FAST = ScryptParams.for_tests()


@pytest.fixture(scope="module")
def record() -> str:
    return hash_password("correct horse", FAST)


def fields(encoded: str) -> list[str]:
    return encoded.split("$")


def replace_field(encoded: str, index: int, value: str) -> str:
    parts = fields(encoded)
    parts[index] = value
    return "$".join(parts)


def test_round_trip(record: str) -> None:
    assert verify_password("correct horse", record)


def test_round_trip_with_default_params() -> None:
    encoded = hash_password("s3cret!")
    assert fields(encoded)[:4] == ["scrypt", str(2**14), "8", "1"]
    assert verify_password("s3cret!", encoded)
    assert not verify_password("s3cret?", encoded)


def test_record_format_stores_scheme_params_salt_and_hash(record: str) -> None:
    scheme, n, r, p, salt, digest = fields(record)
    assert (scheme, n, r, p) == ("scrypt", str(FAST.n), str(FAST.r), str(FAST.p))
    assert len(base64.b64decode(salt, validate=True)) == 16
    assert len(base64.b64decode(digest, validate=True)) == 32


def test_record_does_not_contain_the_password() -> None:
    assert "hunter2" not in hash_password("hunter2", FAST)


def test_params_are_read_from_the_record() -> None:
    params = ScryptParams(n=2**10, r=4, p=2)
    encoded = hash_password("pw", params)
    assert fields(encoded)[1:4] == ["1024", "4", "2"]
    assert verify_password("pw", encoded)


def test_for_tests_params_are_cheaper_than_defaults() -> None:
    assert FAST.n < ScryptParams().n
    assert ScryptParams() == ScryptParams(n=2**14, r=8, p=1)


@pytest.mark.parametrize(
    "attempt",
    ["correct horsE", "correct horse ", " correct horse", "correct", "", "CORRECT HORSE"],
)
def test_wrong_password_is_rejected(record: str, attempt: str) -> None:
    assert verify_password(attempt, record) is False


def test_matching_password_returns_true_exactly(record: str) -> None:
    assert verify_password("correct horse", record) is True


def test_empty_password_round_trip() -> None:
    encoded = hash_password("", FAST)
    assert verify_password("", encoded)
    assert not verify_password(" ", encoded)


def test_salts_differ_between_hashes_of_the_same_password() -> None:
    first = hash_password("same", FAST)
    second = hash_password("same", FAST)
    assert first != second
    assert fields(first)[4] != fields(second)[4]
    assert fields(first)[5] != fields(second)[5]
    assert verify_password("same", first)
    assert verify_password("same", second)


@pytest.mark.parametrize(
    "password",
    [
        "pässwörd",
        "密码很长很长",
        "пароль",
        "🔑🚀 emoji",
        "tab\tand\nnewline",
        "$dollar$sign$",
        "a" * 1000,
    ],
    ids=["latin", "cjk", "cyrillic", "emoji", "whitespace", "dollars", "long"],
)
def test_unicode_and_unusual_passwords_round_trip(password: str) -> None:
    encoded = hash_password(password, FAST)
    assert verify_password(password, encoded)
    assert not verify_password(password[:-1], encoded)


def test_unicode_passwords_are_not_confused_with_ascii_lookalikes() -> None:
    encoded = hash_password("pässwörd", FAST)
    assert not verify_password("passwoerd", encoded)
    assert not verify_password("passwörd", encoded)


def test_tampered_digest_is_rejected(record: str) -> None:
    digest = bytearray(base64.b64decode(fields(record)[5]))
    digest[0] ^= 1
    tampered = replace_field(record, 5, base64.b64encode(bytes(digest)).decode())
    assert not verify_password("correct horse", tampered)


def test_swapped_salt_is_rejected(record: str) -> None:
    other = hash_password("correct horse", FAST)
    assert not verify_password("correct horse", replace_field(record, 4, fields(other)[4]))


def test_changed_cost_params_are_rejected(record: str) -> None:
    assert not verify_password("correct horse", replace_field(record, 1, str(FAST.n * 2)))
    assert not verify_password("correct horse", replace_field(record, 3, "2"))


MALFORMED = {
    "empty": "",
    "plaintext": "correct horse",
    "only-scheme": "scrypt",
    "scheme-and-dollar": "scrypt$",
    "too-few-fields": "scrypt$256$8$1$c2FsdA==",
    "too-many-fields": "scrypt$256$8$1$c2FsdA==$ZGln$extra",
    "other-scheme": "bcrypt$256$8$1$c2FsdA==$ZGlnZXN0",
    "upper-scheme": "SCRYPT$256$8$1$c2FsdA==$ZGlnZXN0",
    "non-int-n": "scrypt$abc$8$1$c2FsdA==$ZGlnZXN0",
    "expr-n": "scrypt$2**8$8$1$c2FsdA==$ZGlnZXN0",
    "float-r": "scrypt$256$8.0$1$c2FsdA==$ZGlnZXN0",
    "empty-p": "scrypt$256$8$$c2FsdA==$ZGlnZXN0",
    "n-not-power-of-two": "scrypt$255$8$1$c2FsdA==$ZGlnZXN0",
    "n-zero": "scrypt$0$8$1$c2FsdA==$ZGlnZXN0",
    "n-one": "scrypt$1$8$1$c2FsdA==$ZGlnZXN0",
    "r-zero": "scrypt$256$0$1$c2FsdA==$ZGlnZXN0",
    "p-zero": "scrypt$256$8$0$c2FsdA==$ZGlnZXN0",
    "memory-too-large": f"scrypt${2**40}$8$1$c2FsdA==$ZGlnZXN0",
    "salt-not-base64": "scrypt$256$8$1$!!!$ZGlnZXN0",
    "salt-bad-padding": "scrypt$256$8$1$abc$ZGlnZXN0",
    "digest-not-base64": "scrypt$256$8$1$c2FsdA==$%%%",
    "digest-non-ascii": "scrypt$256$8$1$c2FsdA==$é",
    "digest-empty": "scrypt$256$8$1$c2FsdA==$",
}


@pytest.mark.parametrize("encoded", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_records_return_false(encoded: str) -> None:
    assert verify_password("correct horse", encoded) is False


def test_truncated_real_record_returns_false(record: str) -> None:
    for cut in (1, 5, len(record) // 2, len(record) - 3):
        assert verify_password("correct horse", record[:cut]) is False


@pytest.mark.parametrize(
    "encoded",
    [
        "scrypt$99999999999999999999$8$1$c2FsdA==$ZGlnZXN0",
        "scrypt$256$99999999999999999999$1$c2FsdA==$ZGlnZXN0",
        f"scrypt${2**62}$8$1$c2FsdA==$ZGlnZXN0",
        "scrypt$-16$8$1$c2FsdA==$ZGlnZXN0",
    ],
    ids=["huge-n", "huge-r", "n-2-62", "negative-n"],
)
def test_out_of_range_params_return_false(encoded: str) -> None:
    assert verify_password("correct horse", encoded) is False
