"""JSON over HTTP for the provider adapters, with every failure classified.

`call` never raises for what happens on the wire: it returns the HTTP status
and parsed body, or the outcome that the failure implies for the money
(nothing sent, or maybe sent).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp

from engine.providers.base import Outcome

log = logging.getLogger("callgate.providers")

# Statuses that mean the request was not processed, so a retry is safe.
NOT_PROCESSED = frozenset({408, 429, 503})
MAX_BODY_BYTES = 1_000_000


@dataclass(frozen=True)
class Answer:
    """An HTTP response (status and JSON body) or the outcome of a failure."""

    status: int | None
    body: Any = None
    failure: Outcome | None = None
    error: str | None = None


class Transport:
    """JSON requests to one base URL.

    After `open` the requests share one session until `close`. Without it each
    request opens and closes its own session, so a short-lived adapter (one
    API request) leaves nothing to clean up.
    """

    def __init__(self, base_url: str, token: str | None, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _headers(self, extra: dict[str, str] | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        headers.update(extra or {})
        return headers

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """Send one request; classify timeouts and connection errors."""
        if self._session is not None:
            return await self._call(self._session, method, path, body, params, headers)
        async with aiohttp.ClientSession(timeout=self.timeout) as session:
            return await self._call(session, method, path, body, params, headers)

    async def _call(
        self,
        session: aiohttp.ClientSession,
        method: str,
        path: str,
        body: Any,
        params: dict[str, str] | None,
        headers: dict[str, str] | None,
    ) -> Answer:
        url = self.base_url + path
        try:
            async with session.request(
                method, url, json=body, params=params, headers=self._headers(headers)
            ) as response:
                raw = await response.content.read(MAX_BODY_BYTES)
                return Answer(response.status, _parse(raw))
        except TimeoutError:
            log.warning("provider request timed out method=%s path=%s", method, path)
            return Answer(None, failure=Outcome.UNKNOWN, error="provider timed out")
        except aiohttp.ClientConnectorError as exc:
            # No connection was made, so nothing was sent.
            log.warning("provider unreachable path=%s: %s", path, exc)
            return Answer(
                None, failure=Outcome.UNAVAILABLE, error="provider unreachable"
            )
        except aiohttp.ClientError as exc:
            # The connection broke after the request may have been sent.
            log.warning("provider request failed path=%s: %s", path, exc)
            return Answer(
                None,
                failure=Outcome.UNKNOWN,
                error=f"provider connection failed: {exc}",
            )

    async def open(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _parse(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw.strip() else None
    except ValueError:
        return None


def http_failure(answer: Answer) -> tuple[Outcome, str]:
    """Return the outcome and error text of a non-2xx response."""
    status = answer.status or 0
    detail = ""
    if isinstance(answer.body, dict) and isinstance(answer.body.get("error"), str):
        detail = ": " + answer.body["error"][:200]
    if status in NOT_PROCESSED:
        return Outcome.UNAVAILABLE, f"provider busy (HTTP {status}){detail}"
    if 400 <= status < 500:
        return Outcome.REFUSED, f"provider rejected the request (HTTP {status}){detail}"
    return Outcome.UNKNOWN, f"provider error (HTTP {status}){detail}"
