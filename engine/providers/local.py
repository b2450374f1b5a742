"""Local development providers: SMS and an eSIM catalogue that need no network.

They accept everything and deliver nothing; results are derived from the
reference or idempotency key, so they keep no state and return the same result
in every process.
"""

from __future__ import annotations

import hashlib
import logging
from decimal import Decimal

from engine.providers.base import (
    Coverage,
    EsimOrder,
    Outcome,
    OutgoingSms,
    Package,
    SmsResult,
)

log = logging.getLogger("callgate.providers")

SMDP_ADDRESS = "smdp.example"


class LocalSms:
    """The `local` SMS provider: accepts every message, reports it delivered."""

    code = "local"
    name = "Local development provider"

    async def send(self, message: OutgoingSms) -> SmsResult:
        log.info(
            "local SMS accepted reference=%s segments=%d",
            message.reference,
            message.segments,
        )
        return SmsResult(Outcome.ACCEPTED, "accepted", "local-" + message.reference)

    async def status(
        self, reference: str, provider_message_id: str | None
    ) -> SmsResult:
        return SmsResult(
            Outcome.ACCEPTED, "delivered", provider_message_id or "local-" + reference
        )

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None


def _coverage(*countries: tuple[str, str, tuple[str, ...]]) -> tuple[Coverage, ...]:
    return tuple(Coverage(code, name, networks) for code, name, networks in countries)


EUROPE = _coverage(
    ("DE", "Germany", ("Telekom", "Vodafone", "O2")),
    ("FR", "France", ("Orange", "SFR")),
    ("ES", "Spain", ("Movistar", "Vodafone")),
    ("IT", "Italy", ("TIM", "WindTre")),
    ("GB", "United Kingdom", ("EE", "Vodafone")),
)
CATALOGUE = (
    Package(
        "P2CYMUS93",
        "Europe 3 GB 30 days",
        "Europe",
        3072,
        30,
        Decimal("4.500000"),
        "EUR",
        EUROPE,
    ),
    Package(
        "EU10GB30",
        "Europe 10 GB 30 days",
        "Europe",
        10240,
        30,
        Decimal("12.000000"),
        "EUR",
        EUROPE,
    ),
    Package(
        "US5GB30",
        "United States 5 GB 30 days",
        "North America",
        5120,
        30,
        Decimal("8.000000"),
        "EUR",
        _coverage(("US", "United States", ("AT&T", "T-Mobile"))),
    ),
    Package(
        "GLOBAL1GB7",
        "Global 1 GB 7 days",
        "Global",
        1024,
        7,
        Decimal("6.000000"),
        "EUR",
        (*EUROPE, *_coverage(("US", "United States", ("AT&T",)))),
    ),
)


class LocalEsim:
    """The `local` eSIM catalogue: every order is ready at once."""

    code = "local"

    def __init__(self, currency: str) -> None:
        # The catalogue is priced in EUR. A deployment in another currency
        # gets the same figures in its own currency, enough for development.
        self.catalogue = [
            Package(
                p.code,
                p.name,
                p.region,
                p.data_mb,
                p.validity_days,
                p.price,
                currency,
                p.coverage,
            )
            for p in CATALOGUE
        ]

    async def packages(self) -> list[Package]:
        return list(self.catalogue)

    async def place_order(self, package_code: str, idempotency_key: str) -> EsimOrder:
        package = next((p for p in self.catalogue if p.code == package_code), None)
        if package is None:
            return EsimOrder(Outcome.REFUSED, "failed", error="unknown package")
        digest = hashlib.sha256(idempotency_key.encode()).hexdigest()
        iccid = "8999" + str(int(digest[:15], 16)).zfill(15)[:15]
        code = digest[15:31].upper()
        return EsimOrder(
            Outcome.ACCEPTED,
            "ready",
            "local-" + digest[:12],
            iccid,
            f"LPA:1${SMDP_ADDRESS}${code}",
            package.data_mb,
            0,
            None,
        )

    async def order(
        self, idempotency_key: str, upstream_order_id: str | None, package_code: str
    ) -> EsimOrder:
        return await self.place_order(package_code, idempotency_key)

    async def close(self) -> None:
        return None
