"""Dashboard logins: the gateway's key pairs, checked in constant time, and signed sessions.

A session is a cookie holding ``itsdangerous``-signed data (the access key id and a random
session id) with its issue time; the signing key is random per process, so a restart logs
everyone out and nothing secret is ever stored. Logout revokes the session id for the
rest of its lifetime. The login form carries a double-submit token (a random value in a
SameSite=Strict cookie and in a hidden field), so another site cannot log a browser in.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer

SESSION_COOKIE = "enigma_session"
LOGIN_COOKIE = "enigma_login"
#: How long a login form stays usable.
LOGIN_FORM_SECONDS = 3600


def _digest(text: str) -> bytes:
    """Fixed-length form of a credential, so comparing it leaks not even its length."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class Sessions:
    """Checks key pairs and issues, reads and revokes session tokens (thread-safe)."""

    def __init__(self, credentials: dict[str, str], lifetime: float, secure: bool) -> None:
        self._credentials = {_digest(k): (k, _digest(v)) for k, v in credentials.items()}
        self.lifetime = lifetime
        self.secure = secure
        self._signer = URLSafeTimedSerializer(secrets.token_bytes(32),
                                              salt="enigma-dashboard-session")
        self._lock = threading.Lock()
        self._revoked: dict[str, float] = {}  # session id -> when its token expires anyway

    def check(self, access_key: str, secret_key: str) -> str | None:
        """The access key id if the pair is configured, else None. Every configured pair
        is compared, all in constant time, so timing tells nothing about which part (or
        which key id) was wrong."""
        want_key, want_secret = _digest(access_key), _digest(secret_key)
        found = None
        for key_digest, (name, secret_digest) in self._credentials.items():
            key_ok = hmac.compare_digest(key_digest, want_key)
            secret_ok = hmac.compare_digest(secret_digest, want_secret)
            if key_ok and secret_ok:
                found = name
        return found

    def issue(self, access_key: str) -> str:
        return self._signer.dumps({"k": access_key, "s": secrets.token_hex(16)})

    def _load(self, token: str | None) -> dict[str, Any] | None:
        if not token or len(token) > 4096:
            return None
        try:
            data = self._signer.loads(token, max_age=self.lifetime)
        except BadSignature:  # forged, damaged or expired (SignatureExpired is one)
            return None
        if not isinstance(data, dict) or not isinstance(data.get("k"), str) \
                or not isinstance(data.get("s"), str):
            return None
        return data

    def user(self, token: str | None) -> str | None:
        """The access key id of a valid, unexpired, not revoked session token."""
        data = self._load(token)
        if data is None or _digest(data["k"]) not in self._credentials:
            return None
        with self._lock:
            if data["s"] in self._revoked:
                return None
        return data["k"]

    def revoke(self, token: str | None) -> None:
        """Logout: the token stops working now, not when it expires."""
        data = self._load(token)
        if data is None:
            return
        now = time.time()
        with self._lock:
            self._revoked = {s: t for s, t in self._revoked.items() if t > now}
            self._revoked[data["s"]] = now + self.lifetime

    def cookie_options(self, max_age: float | None) -> dict[str, Any]:
        """Attributes of both cookies: never readable by scripts, never sent cross-site,
        HTTPS-only when the dashboard serves HTTPS."""
        return {"max_age": int(max_age) if max_age is not None else None, "path": "/",
                "httponly": True, "samesite": "strict", "secure": self.secure}


def new_login_token() -> str:
    return secrets.token_urlsafe(24)


def same_token(cookie: str | None, field: str | None) -> bool:
    """Whether the login form's hidden token matches its cookie."""
    return bool(cookie) and bool(field) and hmac.compare_digest(
        _digest(cookie or ""), _digest(field or ""))
