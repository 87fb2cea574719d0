"""Signed, expiring session tokens (HMAC-SHA256), bound to one user and session.

Format: ``<key id>.<base64url claims JSON>.<base64url signature>``. The signer
holds several keys by id and signs with the current one; tokens signed by any
key it still holds verify, so keys rotate without logging everyone out.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cim.errors import Unauthenticated


@dataclass(frozen=True)
class TokenClaims:
    """Who a token speaks for, and until when."""

    user_id: int
    user_name: str
    session_id: str
    device_id: str
    issued_at_ms: int
    expires_at_ms: int


class TokenSigner:
    """Issues and verifies session tokens."""

    def __init__(
        self,
        keys: Mapping[str, bytes],
        current_key_id: str,
        ttl_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if current_key_id not in keys:
            raise ValueError(f"current key id {current_key_id!r} is not among the keys")
        if any(len(key) < 16 for key in keys.values()):
            raise ValueError("token keys must be at least 16 bytes")
        if any("." in key_id for key_id in keys):
            raise ValueError("token key ids must not contain '.'")
        self._keys = dict(keys)
        self._current = current_key_id
        self._ttl_ms = int(ttl_seconds * 1000)
        self._clock = clock

    def issue(self, user_id: int, user_name: str, session_id: str, device_id: str = "") -> str:
        now_ms = int(self._clock() * 1000)
        claims = {
            "uid": user_id,
            "name": user_name,
            "sid": session_id,
            "dev": device_id,
            "iat": now_ms,
            "exp": now_ms + self._ttl_ms,
        }
        body = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
        signing_input = f"{self._current}.{body}"
        return f"{signing_input}.{_b64(self._sign(self._current, signing_input))}"

    def verify(self, token: str) -> TokenClaims:
        """The token's claims; raises Unauthenticated if forged, malformed or expired."""
        parts = token.split(".")
        if len(parts) != 3:
            raise Unauthenticated("malformed session token")
        key_id, body, signature = parts
        if key_id not in self._keys:
            raise Unauthenticated("session token signed with an unknown key")
        # Compared as text, so a token has exactly one accepted spelling.
        expected = _b64(self._sign(key_id, f"{key_id}.{body}"))
        if not hmac.compare_digest(signature.encode(), expected.encode()):
            raise Unauthenticated("invalid session token signature")
        try:
            raw = json.loads(_unb64(body))
            if not isinstance(raw, dict):
                raise TypeError("claims must be an object")
            claims = TokenClaims(
                user_id=_int64(raw["uid"]),
                user_name=str(raw["name"]),
                session_id=str(raw["sid"]),
                device_id=str(raw.get("dev", "")),
                issued_at_ms=_int64(raw["iat"]),
                expires_at_ms=_int64(raw["exp"]),
            )
        except (ValueError, KeyError, TypeError, OverflowError, binascii.Error):
            raise Unauthenticated("malformed session token") from None
        if claims.expires_at_ms <= int(self._clock() * 1000):
            raise Unauthenticated("session token expired: log in again")
        return claims

    def _sign(self, key_id: str, signing_input: str) -> bytes:
        return hmac.new(self._keys[key_id], signing_input.encode(), hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int64(value: object) -> int:
    """A claim that must be an integer in protobuf's int64 range."""
    if not isinstance(value, int) or isinstance(value, bool) or not -(2**63) <= value < 2**63:
        raise ValueError("claim is not an int64")
    return value
