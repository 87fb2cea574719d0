"""Unit tests for cim.core.tokens: signed, expiring session tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from cim.core.tokens import TokenClaims, TokenSigner
from cim.errors import Unauthenticated

KEY_1 = b"k" * 32
KEY_2 = b"second-key-material-0123456789"
TTL = 60.0
START = 1_700_000_000.0


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def signer(
    keys: dict[str, bytes] | None = None,
    current: str = "k1",
    clock: FakeClock | None = None,
    ttl: float = TTL,
) -> TokenSigner:
    return TokenSigner(keys or {"k1": KEY_1}, current, ttl, clock=clock or FakeClock())


def sign_raw(key_id: str, key: bytes, body: str) -> str:
    """A token over an arbitrary body, correctly signed (as only a key holder could)."""
    signing_input = f"{key_id}.{body}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def flip(text: str, index: int) -> str:
    replacement = "B" if text[index] != "B" else "C"
    return text[:index] + replacement + text[index + 1 :]


# --- round trip ------------------------------------------------------------------------------


def test_round_trip_returns_all_claims() -> None:
    tokens = signer()
    token = tokens.issue(42, "alice", "sess-1", "phone")
    assert tokens.verify(token) == TokenClaims(
        user_id=42,
        user_name="alice",
        session_id="sess-1",
        device_id="phone",
        issued_at_ms=int(START * 1000),
        expires_at_ms=int(START * 1000) + int(TTL * 1000),
    )


def test_device_id_defaults_to_empty() -> None:
    tokens = signer()
    assert tokens.verify(tokens.issue(1, "bob", "s")).device_id == ""


def test_round_trip_unicode_and_awkward_names() -> None:
    tokens = signer()
    name = 'Zoë 张伟 🚀 "quoted" a.b'
    claims = tokens.verify(tokens.issue(7, name, "s.i.d", "dev.ice"))
    assert (claims.user_name, claims.session_id, claims.device_id) == (name, "s.i.d", "dev.ice")


def test_token_has_three_dot_separated_parts_starting_with_key_id() -> None:
    token = signer().issue(1, "a.b.c", "s.s", "d.d")
    parts = token.split(".")
    assert len(parts) == 3
    assert parts[0] == "k1"


def test_token_verifies_at_a_different_signer_with_same_keys() -> None:
    token = signer().issue(5, "eve", "s")
    assert signer().verify(token).user_id == 5


def test_tokens_for_different_users_differ() -> None:
    tokens = signer()
    assert tokens.issue(1, "a", "s") != tokens.issue(2, "a", "s")


# --- expiry ----------------------------------------------------------------------------------


def test_token_valid_until_just_before_expiry() -> None:
    clock = FakeClock()
    tokens = signer(clock=clock)
    token = tokens.issue(1, "a", "s")
    clock.now = START + TTL - 0.001
    assert tokens.verify(token).user_id == 1


@pytest.mark.parametrize("later", [TTL, TTL + 0.001, TTL * 100])
def test_expired_token_is_rejected(later: float) -> None:
    clock = FakeClock()
    tokens = signer(clock=clock)
    token = tokens.issue(1, "a", "s")
    clock.now = START + later
    with pytest.raises(Unauthenticated, match="expired"):
        tokens.verify(token)


def test_zero_ttl_token_is_already_expired() -> None:
    tokens = signer(ttl=0)
    with pytest.raises(Unauthenticated, match="expired"):
        tokens.verify(tokens.issue(1, "a", "s"))


def test_expiry_uses_the_ttl_given() -> None:
    clock = FakeClock()
    tokens = signer(clock=clock, ttl=3600)
    token = tokens.issue(1, "a", "s")
    clock.now = START + 3000
    assert tokens.verify(token).expires_at_ms == int((START + 3600) * 1000)


# --- forgery and tampering -------------------------------------------------------------------


def test_tampered_claims_are_rejected() -> None:
    tokens = signer()
    key_id, body, signature = tokens.issue(1, "alice", "s").split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["uid"] = 2
    forged_body = b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    with pytest.raises(Unauthenticated):
        tokens.verify(f"{key_id}.{forged_body}.{signature}")


def test_extended_expiry_is_rejected() -> None:
    clock = FakeClock()
    tokens = signer(clock=clock)
    key_id, body, signature = tokens.issue(1, "alice", "s").split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["exp"] += 10**9
    forged_body = b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    clock.now = START + TTL * 2
    with pytest.raises(Unauthenticated):
        tokens.verify(f"{key_id}.{forged_body}.{signature}")


@pytest.mark.parametrize("index", [0, 5, 20, -2])
def test_tampered_body_character_is_rejected(index: int) -> None:
    tokens = signer()
    key_id, body, signature = tokens.issue(1, "alice", "s").split(".")
    with pytest.raises(Unauthenticated):
        tokens.verify(f"{key_id}.{flip(body, index)}.{signature}")


@pytest.mark.parametrize("index", [0, 1, 10, 30])
def test_tampered_signature_is_rejected(index: int) -> None:
    tokens = signer()
    key_id, body, signature = tokens.issue(1, "alice", "s").split(".")
    with pytest.raises(Unauthenticated, match="signature"):
        tokens.verify(f"{key_id}.{body}.{flip(signature, index)}")


def test_truncated_or_missing_signature_is_rejected() -> None:
    tokens = signer()
    key_id, body, signature = tokens.issue(1, "alice", "s").split(".")
    for bad in ("", signature[:-4], signature[:20]):
        with pytest.raises(Unauthenticated):
            tokens.verify(f"{key_id}.{body}.{bad}")


def test_token_signed_with_wrong_key_is_rejected() -> None:
    attacker = signer({"k1": b"x" * 32})
    with pytest.raises(Unauthenticated, match="signature"):
        signer().verify(attacker.issue(1, "admin", "s"))


def test_token_with_unknown_key_id_is_rejected() -> None:
    other = signer({"k9": KEY_1}, current="k9")
    with pytest.raises(Unauthenticated, match="unknown key"):
        signer().verify(other.issue(1, "a", "s"))


def test_relabelled_key_id_is_rejected() -> None:
    # Both keys are held, but the signature was made with k1, not k2.
    tokens = signer({"k1": KEY_1, "k2": KEY_2})
    _, body, signature = tokens.issue(1, "a", "s").split(".")
    with pytest.raises(Unauthenticated):
        tokens.verify(f"k2.{body}.{signature}")


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        ".",
        "..",
        "...",
        "a",
        "a.b",
        "a.b.c",
        "a.b.c.d",
        "k1",
        "k1.b",
        "k1..",
        "k1.b.c.d",
        "k1.!!!.@@@",
        "k1.%%%%.****",
        "k1.é.ü",
        "k1.eyJ1aWQiOjF9.not-a-signature",
        " k1.abc.def",
        "Bearer k1.abc.def",
        "\x00\x00",
    ],
)
def test_garbage_tokens_are_rejected(garbage: str) -> None:
    with pytest.raises(Unauthenticated):
        signer().verify(garbage)


def test_extra_segment_on_a_valid_token_is_rejected() -> None:
    tokens = signer()
    token = tokens.issue(1, "a", "s")
    with pytest.raises(Unauthenticated, match="malformed"):
        tokens.verify(token + ".extra")


@pytest.mark.parametrize(
    "body",
    [
        b64(b"not json"),
        b64(b"[1, 2, 3]"),
        b64(b'"a string"'),
        b64(b"\xff\xfe\x00"),
        b64(json.dumps({"name": "a", "sid": "s", "iat": 0, "exp": 2**62}).encode()),
        b64(json.dumps({"uid": "x", "name": "a", "sid": "s", "iat": 0, "exp": 2**62}).encode()),
        b64(json.dumps({"uid": None, "name": "a", "sid": "s", "iat": 0, "exp": 2**62}).encode()),
        b64(json.dumps({"uid": 1, "name": "a", "sid": "s", "iat": 0}).encode()),
        "",
        "!!!!",
    ],
    ids=[
        "not-json",
        "json-list",
        "json-string",
        "not-utf8",
        "missing-uid",
        "non-int-uid",
        "null-uid",
        "missing-exp",
        "empty",
        "non-base64",
    ],
)
def test_correctly_signed_malformed_claims_are_rejected(body: str) -> None:
    with pytest.raises(Unauthenticated):
        signer().verify(sign_raw("k1", KEY_1, body))


def test_correctly_signed_minimal_claims_without_device_are_accepted() -> None:
    body = b64(json.dumps({"uid": 3, "name": "a", "sid": "s", "iat": 1, "exp": 2**62}).encode())
    claims = signer().verify(sign_raw("k1", KEY_1, body))
    assert (claims.user_id, claims.device_id) == (3, "")


def test_signature_must_be_canonical() -> None:
    tokens = signer()
    key_id, body, signature = tokens.issue(1, "alice", "s").split(".")
    accepted = []
    for variant in (signature + "==", signature + "!!", signature + "=x"):
        try:
            tokens.verify(f"{key_id}.{body}.{variant}")
        except Unauthenticated:
            continue
        accepted.append(variant)
    assert accepted == []


# --- key rotation ----------------------------------------------------------------------------


def test_rotation_old_tokens_still_verify_after_new_key_becomes_current() -> None:
    clock = FakeClock()
    before = signer({"k1": KEY_1}, "k1", clock)
    old_token = before.issue(9, "carol", "s-old")
    after = signer({"k1": KEY_1, "k2": KEY_2}, "k2", clock)
    assert after.verify(old_token).user_id == 9
    new_token = after.issue(9, "carol", "s-new")
    assert new_token.startswith("k2.")
    assert after.verify(new_token).session_id == "s-new"


def test_rotation_new_tokens_do_not_verify_at_signer_without_new_key() -> None:
    after = signer({"k1": KEY_1, "k2": KEY_2}, "k2")
    with pytest.raises(Unauthenticated, match="unknown key"):
        signer({"k1": KEY_1}, "k1").verify(after.issue(1, "a", "s"))


def test_rotation_retired_key_tokens_are_rejected() -> None:
    old_token = signer({"k1": KEY_1}, "k1").issue(1, "a", "s")
    retired = signer({"k2": KEY_2}, "k2")
    with pytest.raises(Unauthenticated, match="unknown key"):
        retired.verify(old_token)


# --- constructor -----------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 8, 15])
def test_constructor_rejects_short_keys(length: int) -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        TokenSigner({"k1": b"x" * length}, "k1", TTL)


def test_constructor_rejects_a_short_non_current_key() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        TokenSigner({"k1": KEY_1, "old": b"short"}, "k1", TTL)


def test_constructor_accepts_a_sixteen_byte_key() -> None:
    tokens = TokenSigner({"k1": b"x" * 16}, "k1", TTL)
    assert tokens.verify(tokens.issue(1, "a", "s")).user_id == 1


@pytest.mark.parametrize("current", ["k2", "", "K1"])
def test_constructor_rejects_unknown_current_key_id(current: str) -> None:
    with pytest.raises(ValueError, match="not among the keys"):
        TokenSigner({"k1": KEY_1}, current, TTL)


def test_constructor_rejects_empty_key_set() -> None:
    with pytest.raises(ValueError):
        TokenSigner({}, "k1", TTL)


def test_constructor_rejects_key_id_with_dot() -> None:
    with pytest.raises(ValueError, match=r"must not contain '\.'"):
        TokenSigner({"k.1": KEY_1}, "k.1", TTL)


def test_signer_keeps_its_own_copy_of_the_keys() -> None:
    keys = {"k1": KEY_1}
    tokens = TokenSigner(keys, "k1", TTL)
    token = tokens.issue(1, "a", "s")
    keys["k1"] = b"y" * 32
    keys.clear()
    assert tokens.verify(token).user_id == 1
