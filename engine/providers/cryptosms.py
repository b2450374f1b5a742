"""The cryptosms adapter: an HTTP SMS provider, wire protocol in docs/sms-esim.md.

POST /send takes {reference, to, from, text, encoding, segments} and returns
{id, status}; GET /status/ID (or /status?reference=R before an id is known)
returns {id, status}. Every request carries `Authorization: Bearer TOKEN`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from engine.providers.base import Outcome, OutgoingSms, SmsResult
from engine.providers.transport import Answer, Transport, http_failure

# Provider status words that mean the message was not taken.
REFUSED_STATUSES = frozenset({"rejected", "refused", "invalid"})
MAX_STATUS_LENGTH = 32
MAX_ID_LENGTH = 128


class CryptoSms:
    """The `cryptosms` provider over HTTP."""

    code = "cryptosms"
    name = "CryptoSMS"

    def __init__(self, base_url: str, token: str | None, timeout: float) -> None:
        self.transport = Transport(base_url, token, timeout)

    async def send(self, message: OutgoingSms) -> SmsResult:
        answer = await self.transport.call(
            "POST",
            "/send",
            body={
                "reference": message.reference,
                "to": message.phone,
                "from": message.sender_id,
                "text": message.text,
                "encoding": message.encoding,
                "segments": message.segments,
            },
        )
        return _result(answer)

    async def status(
        self, reference: str, provider_message_id: str | None
    ) -> SmsResult:
        if provider_message_id:
            answer = await self.transport.call(
                "GET", "/status/" + quote(provider_message_id, safe="")
            )
        else:
            answer = await self.transport.call(
                "GET", "/status", params={"reference": reference}
            )
        if answer.status == 404:
            return SmsResult(
                Outcome.REFUSED, error="the provider has no record of the message"
            )
        if answer.status is not None and not 200 <= answer.status < 300:
            # Only a 404 proves the message never arrived; any other error on
            # a status check leaves its outcome unknown.
            return SmsResult(
                Outcome.UNKNOWN, error=f"status check failed (HTTP {answer.status})"
            )
        return _result(answer)

    async def open(self) -> None:
        await self.transport.open()

    async def close(self) -> None:
        await self.transport.close()


def _result(answer: Answer) -> SmsResult:
    if answer.failure is not None:
        return SmsResult(answer.failure, error=answer.error)
    assert answer.status is not None
    if not 200 <= answer.status < 300:
        outcome, error = http_failure(answer)
        return SmsResult(outcome, error=error)
    body: Any = answer.body
    status = body.get("status") if isinstance(body, dict) else None
    if not isinstance(status, str) or not 0 < len(status) <= MAX_STATUS_LENGTH:
        # A 2xx without a readable status: the message may have been taken.
        return SmsResult(Outcome.UNKNOWN, error="provider answer has no status")
    status = status.lower()
    raw_id = body.get("id")
    if isinstance(raw_id, int) and not isinstance(raw_id, bool):
        raw_id = str(raw_id)
    message_id: str | None = None
    if isinstance(raw_id, str) and 0 < len(raw_id) <= MAX_ID_LENGTH:
        message_id = raw_id
    raw_error = body.get("error")
    detail = raw_error[:200] if isinstance(raw_error, str) else None
    if status in REFUSED_STATUSES:
        return SmsResult(Outcome.REFUSED, status, message_id, detail or status)
    return SmsResult(Outcome.ACCEPTED, status, message_id, detail)
