"""Random tokens, API-key hashing and password hashing."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

# argon2id with the library's defaults (RFC 9106 low-memory profile).
_hasher = PasswordHasher()

API_KEY_PREFIX = "cg_"
SIP_PASSWORD_ALPHABET = string.ascii_letters + string.digits
MIN_PASSWORD_LENGTH = 10
PASSWORD_RULES = (
    f"at least {MIN_PASSWORD_LENGTH} characters with a lower-case letter, "
    "an upper-case letter and a digit"
)


def new_api_key() -> str:
    """Return a new API key: 32 random bytes, URL-safe, with a recognisable prefix."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def keys_equal(left: bytes, right: bytes) -> bool:
    return hmac.compare_digest(left, right)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Return whether password matches; a missing hash never matches."""
    if not password_hash:
        # Spend the same time as a real check, so timing does not reveal
        # which logins have a password.
        _hasher.hash(password)
        return False
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def new_sip_password(length: int = 20) -> str:
    """Return a strong SIP password (letters and digits, one of each class)."""
    while True:
        candidate = "".join(
            secrets.choice(SIP_PASSWORD_ALPHABET) for _ in range(length)
        )
        if password_is_strong(candidate):
            return candidate


def new_login_password(length: int = 16) -> str:
    return new_sip_password(length)


def password_is_strong(password: str) -> bool:
    return (
        len(password) >= MIN_PASSWORD_LENGTH
        and any(c.islower() for c in password)
        and any(c.isupper() for c in password)
        and any(c.isdigit() for c in password)
    )
