"""Property-based fuzzing of the pure input surfaces: whatever text arrives,
they answer or refuse with their own error, never crash."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cim.client import commands
from cim.core import validation
from cim.core.passwords import ScryptParams, hash_password, verify_password
from cim.core.tokens import TokenSigner
from cim.errors import InvalidArgument, Unauthenticated

FUZZ = settings(
    max_examples=500,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
INT64_MAX = 2**63 - 1
KEY = b"test-key-0123456789abcdef"
signer = TokenSigner({"k1": KEY}, "k1", ttl_seconds=3600)

# Text as gRPC can carry it (valid UTF-8: no lone surrogates).
text = st.text(max_size=200)
console_line = st.one_of(
    text,
    st.builds(lambda a, b: f"{a};;{b}", st.integers(-(10**30), 10**30), text),
    st.builds(
        lambda head, rest: f"{head} {rest}",
        st.sampled_from(
            [":all", ":help", ":olu", ":pu", ":info", ":q", ":q!", ":emoji", ":delay", ":x"]
        ),
        text,
    ),
    st.builds(
        lambda t, n: f":delay {t} {n}",
        text,
        st.one_of(
            st.floats(allow_nan=True), st.sampled_from(["inf", "-inf", "nan", "1e999", "0x10"])
        ),
    ),
)


@FUZZ
@given(line=console_line)
def test_console_parse_answers_or_refuses(line: str) -> None:
    try:
        command = commands.parse(line)
    except commands.CommandError as err:
        assert str(err)
        return
    if isinstance(command, commands.PrivateMessage):
        assert command.receiver_id > 0 and command.text.strip()
    if isinstance(command, commands.DelayedMessage):
        assert 0 < command.seconds <= commands.MAX_DELAY_SECONDS


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


tampered_token = st.builds(
    lambda token, cut, extra: token[:cut] + extra + token[cut + len(extra) :],
    st.just(signer.issue(7, "alice", "s1")),
    st.integers(0, 200),
    st.text(max_size=5),
)


@FUZZ
@given(token=st.one_of(text, tampered_token, st.binary(max_size=100).map(_b64)))
def test_tokens_verify_refuses_garbage_with_unauthenticated(token: str) -> None:
    try:
        claims = signer.verify(token)
    except Unauthenticated as err:
        assert err.message
        return
    assert claims.user_id == 7  # only the genuine token passes


json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


def claim(valid: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.one_of(
        valid, valid, json_value, st.sampled_from([float("inf"), -float("inf"), 1e300, 2**64])
    )


claims_object = st.fixed_dictionaries(
    {
        "uid": claim(st.integers(1, 100)),
        "name": claim(st.just("alice")),
        "sid": claim(st.just("s1")),
        "iat": claim(st.just(0)),
        "exp": claim(st.just(2**45)),
    },
    optional={"dev": json_value},
)


@FUZZ
@given(claims=st.one_of(claims_object, json_value))
def test_tokens_verify_refuses_signed_malformed_claims(claims: object) -> None:
    """Even a correctly signed token (a leaked or misused key) with malformed
    claims must be refused as Unauthenticated, never crash the caller."""
    body = _b64(json.dumps(claims).encode())
    signing = f"k1.{body}"
    token = f"{signing}.{_b64(signer._sign('k1', signing))}"
    try:
        verified = signer.verify(token)
    except Unauthenticated:
        return
    # Accepted claims must fit the int64 ids every RPC carries.
    assert -INT64_MAX - 1 <= verified.user_id <= INT64_MAX, verified


encoded_hash = st.one_of(
    text,
    st.builds(
        lambda scheme, n, r, p, salt, digest: "$".join([scheme, n, r, p, salt, digest]),
        st.sampled_from(["scrypt", "bcrypt", ""]),
        st.one_of(st.integers(-4, 2**10).map(str), text),
        st.one_of(st.integers(-2, 9).map(str), text),
        st.one_of(st.integers(-2, 3).map(str), text),
        st.one_of(st.binary(max_size=20).map(lambda b: base64.b64encode(b).decode()), text),
        st.one_of(st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()), text),
    ),
)


@FUZZ
@given(password=text, encoded=encoded_hash)
def test_verify_password_never_raises(password: str, encoded: str) -> None:
    assert verify_password(password, encoded) in (True, False)


@settings(max_examples=50, deadline=None, database=None)
@given(password=st.text(min_size=1, max_size=100))
def test_password_round_trip(password: str) -> None:
    encoded = hash_password(password, ScryptParams.for_tests())
    assert verify_password(password, encoded)
    assert not verify_password(password + "x", encoded)


@FUZZ
@given(value=st.one_of(text, st.text(min_size=1000, max_size=5000)), number=st.integers())
def test_validation_refuses_with_invalid_argument(value: str, number: int) -> None:
    for check in (
        validation.check_user_name,
        validation.check_password,
        lambda v: validation.check_text(v, 4096),
        validation.check_group,
        validation.check_client_msg_id,
    ):
        try:
            check(value)
        except InvalidArgument as err:
            assert err.message
    with pytest.raises(InvalidArgument) if number <= 0 else _nothing():
        validation.check_user_id(number)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
