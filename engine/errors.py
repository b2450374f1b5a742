"""The domain's error tree. The boundaries (AGI, API, CLI) translate these."""

from __future__ import annotations

from decimal import Decimal
from typing import Any


class CallgateError(Exception):
    """Base of every error callgate raises on purpose."""


class SettingsError(CallgateError):
    """A setting is missing or invalid; the message names it."""


class DatabaseError(CallgateError):
    """The database cannot be reached or migrated."""


class InvalidInput(CallgateError):
    """An invalid value from outside, with its field and what is expected."""

    def __init__(self, field: str, value: Any, expected: str) -> None:
        self.field = field
        self.value = value
        self.expected = expected
        if isinstance(value, bool) or value is None:
            shown: object = {True: "true", False: "false", None: "null"}[value]
        elif isinstance(value, int) and value.bit_length() > 200:
            shown = f"a number of about {int(value.bit_length() * 0.30103)} digits"
        elif isinstance(value, str | int | float | Decimal):
            shown = str(value)
        else:
            shown = repr(value)
        if isinstance(shown, str) and len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"invalid {field} {shown!r}: expected {expected}")


class NotFound(CallgateError):
    """The object does not exist or is not the caller's (the same error for both)."""


class Forbidden(CallgateError):
    """The caller owns the object but may not do this to it."""


class Conflict(CallgateError):
    """The request conflicts with what is stored (taken name, replayed id, ...)."""


class RateLimited(CallgateError):
    """Too many attempts; retry after the given number of seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class InsufficientFunds(CallgateError):
    """An account cannot pay for what was asked."""
