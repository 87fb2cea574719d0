"""Password hashing with the standard library's scrypt (salted, memory-hard)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass

_SCHEME = "scrypt"


@dataclass(frozen=True)
class ScryptParams:
    """Cost parameters; stored with each hash so they can be raised later."""

    n: int = 2**14
    r: int = 8
    p: int = 1

    @classmethod
    def for_tests(cls) -> ScryptParams:
        """Cheap parameters for test suites (still salted scrypt)."""
        return cls(n=2**8, r=8, p=1)


def hash_password(password: str, params: ScryptParams | None = None) -> str:
    """Returns ``scrypt$n$r$p$salt$hash`` (base64) for the password."""
    params = params or ScryptParams()
    salt = os.urandom(16)
    digest = _derive(password, salt, params)
    return "$".join(
        [_SCHEME, str(params.n), str(params.r), str(params.p), _b64(salt), _b64(digest)]
    )


def verify_password(password: str, encoded: str) -> bool:
    """True when the password matches; False for a mismatch or a malformed record."""
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != _SCHEME:
            return False
        params = ScryptParams(int(n), int(r), int(p))
        expected = base64.b64decode(digest)
        actual = _derive(password, base64.b64decode(salt), params)
    except (ValueError, OverflowError, TypeError):  # malformed or absurd cost numbers
        return False
    return hmac.compare_digest(expected, actual)


def _derive(password: str, salt: bytes, params: ScryptParams) -> bytes:
    return hashlib.scrypt(
        password.encode(),
        salt=salt,
        n=params.n,
        r=params.r,
        p=params.p,
        maxmem=128 * params.n * params.r * params.p * 2,
        dklen=32,
    )


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()
