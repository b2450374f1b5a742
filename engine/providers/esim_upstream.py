"""The eSIM upstream adapter over HTTP; wire protocol in docs/sms-esim.md.

GET /packages lists the catalogue. POST /orders with an `Idempotency-Key`
header places an order, and the same key again returns the same order, which
is how callgate looks up an order with an unknown outcome. GET /orders/ID
refreshes a known one. Every request carries `Authorization: Bearer TOKEN`.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote

from engine.providers.base import Coverage, EsimOrder, Outcome, Package
from engine.providers.transport import Answer, Transport, http_failure

log = logging.getLogger("callgate.providers")

# How long a fetched catalogue is reused, in seconds.
CATALOGUE_TTL = 300.0
ORDER_STATUSES = frozenset({"ready", "processing", "failed"})

# Catalogues by base URL, shared by the short-lived adapters of one process.
_catalogues: dict[str, tuple[float, list[Package]]] = {}


class EsimUpstream:
    """The `upstream` eSIM provider."""

    code = "upstream"

    def __init__(
        self, base_url: str, token: str | None, timeout: float, currency: str
    ) -> None:
        self.transport = Transport(base_url, token, timeout)
        self.currency = currency

    async def packages(self) -> list[Package]:
        """Return the catalogue; raise ProviderFailed when it cannot be read."""
        cached = _catalogues.get(self.transport.base_url)
        if cached is not None and time.monotonic() - cached[0] < CATALOGUE_TTL:
            return cached[1]
        answer = await self.transport.call("GET", "/packages")
        if answer.failure is not None or answer.status != 200:
            raise ProviderFailed(answer.error or f"HTTP {answer.status}")
        items = answer.body.get("packages") if isinstance(answer.body, dict) else None
        if not isinstance(items, list):
            raise ProviderFailed("the package list has no packages array")
        packages = [p for p in map(self._package, items) if p is not None]
        _catalogues[self.transport.base_url] = (time.monotonic(), packages)
        return packages

    def _package(self, item: Any) -> Package | None:
        try:
            price = Decimal(str(item["price"]))
            package = Package(
                code=str(item["code"]),
                name=str(item["name"]),
                region=str(item.get("region") or ""),
                data_mb=int(item["data_mb"]),
                validity_days=int(item["validity_days"]),
                price=price,
                currency=str(item.get("currency") or self.currency),
                coverage=tuple(
                    Coverage(
                        str(c["country"]),
                        str(c.get("name") or c["country"]),
                        tuple(str(n) for n in c.get("networks") or ()),
                    )
                    for c in item.get("coverage") or ()
                ),
            )
        except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
            log.warning("upstream package skipped: invalid %r: %s", item, exc)
            return None
        if not price.is_finite() or price < 0 or package.currency != self.currency:
            log.warning(
                "upstream package %s skipped: price %s %s is not in %s",
                package.code,
                price,
                package.currency,
                self.currency,
            )
            return None
        return package

    async def place_order(self, package_code: str, idempotency_key: str) -> EsimOrder:
        answer = await self.transport.call(
            "POST",
            "/orders",
            body={"package_code": package_code},
            headers={"Idempotency-Key": idempotency_key},
        )
        return _order(answer)

    async def order(
        self, idempotency_key: str, upstream_order_id: str | None, package_code: str
    ) -> EsimOrder:
        if upstream_order_id is None:
            # The order's outcome is unknown: the same key returns it, or
            # places it now if the first request never arrived.
            return await self.place_order(package_code, idempotency_key)
        answer = await self.transport.call(
            "GET", "/orders/" + quote(upstream_order_id, safe="")
        )
        if answer.status is not None and not 200 <= answer.status < 300:
            # A failed refresh tells nothing about the order itself.
            return EsimOrder(
                Outcome.UNKNOWN, error=f"order refresh failed (HTTP {answer.status})"
            )
        return _order(answer)

    async def close(self) -> None:
        await self.transport.close()


class ProviderFailed(Exception):
    """The provider failed a read request (the catalogue)."""


def _optional_int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _optional_text(value: Any, limit: int = 256) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= limit:
        return value
    return None


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _order(answer: Answer) -> EsimOrder:
    if answer.failure is not None:
        return EsimOrder(answer.failure, error=answer.error)
    assert answer.status is not None
    if not 200 <= answer.status < 300:
        outcome, error = http_failure(answer)
        return EsimOrder(outcome, error=error)
    body = answer.body if isinstance(answer.body, dict) else {}
    status = body.get("status")
    if status not in ORDER_STATUSES:
        return EsimOrder(Outcome.UNKNOWN, error="upstream answer has no order status")
    order = EsimOrder(
        Outcome.REFUSED if status == "failed" else Outcome.ACCEPTED,
        status,
        _optional_text(body.get("id"), 128),
        _optional_text(body.get("iccid"), 32),
        _optional_text(body.get("lpa"), 512),
        _optional_int(body.get("data_total_mb")),
        _optional_int(body.get("data_used_mb")),
        _time(body.get("expires_at")),
        _optional_text(body.get("error"), 200),
    )
    return order
