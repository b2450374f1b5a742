"""The provider interfaces: what callgate needs from an SMS or eSIM provider.

Adapters translate their wire protocol into these results and never raise for
a provider's response. A network failure becomes an outcome too, because the
caller decides what to do with the money from the outcome alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Protocol


class Outcome(StrEnum):
    """The result of a hand-off to a provider, as far as callgate can know it."""

    # The provider took the request: charge it.
    ACCEPTED = "accepted"
    # The provider rejected it: release the reservation, mark it failed.
    REFUSED = "refused"
    # Nothing reached the provider (no connection, 429, 503): safe to retry.
    UNAVAILABLE = "unavailable"
    # The request may have arrived (timeout, 500, 502, 504, a cut connection):
    # hold the reservation until a status check or a callback settles it.
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class OutgoingSms:
    """One message as handed to a provider."""

    # Unique per message ("callgate-sms-<id>"); the provider treats a second
    # send with the same reference as the first one.
    reference: str
    phone: str
    sender_id: str | None
    text: str
    encoding: str
    segments: int


@dataclass(frozen=True)
class SmsResult:
    """A provider's response to a send or a status check."""

    outcome: Outcome
    # The provider's own status word (accepted, delivered, ...), if any.
    provider_status: str | None = None
    provider_message_id: str | None = None
    error: str | None = None


class SmsProvider(Protocol):
    code: str
    name: str

    async def send(self, message: OutgoingSms) -> SmsResult: ...

    async def status(
        self, reference: str, provider_message_id: str | None
    ) -> SmsResult: ...

    async def open(self) -> None:
        """Keep a connection pool until close (long-running callers only)."""

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Coverage:
    """A country a package works in, with its networks."""

    country: str
    name: str
    networks: tuple[str, ...] = ()


@dataclass(frozen=True)
class Package:
    """An eSIM data package, at the upstream's price to the operator."""

    code: str
    name: str
    region: str
    data_mb: int
    validity_days: int
    price: Decimal
    currency: str
    coverage: tuple[Coverage, ...] = ()


@dataclass(frozen=True)
class EsimOrder:
    """An upstream's view of one order."""

    outcome: Outcome
    # ready, processing or failed, when the upstream replied.
    upstream_status: str | None = None
    upstream_order_id: str | None = None
    iccid: str | None = None
    lpa: str | None = None
    data_total_mb: int | None = None
    data_used_mb: int | None = None
    expires_at: datetime | None = None
    error: str | None = None


class EsimProvider(Protocol):
    code: str

    async def packages(self) -> list[Package]: ...

    async def place_order(
        self, package_code: str, idempotency_key: str
    ) -> EsimOrder: ...

    async def order(
        self, idempotency_key: str, upstream_order_id: str | None, package_code: str
    ) -> EsimOrder: ...

    async def close(self) -> None: ...
