"""SMS resale: segments, pricing, scheduling and the life of one message.

A message is priced per segment for every account of the chain (the client
at its plan's price, each reseller above at its own plan's), reserved on all
of them in one transaction under row locks, then handed to the provider
outside any transaction. The provider's answer decides the money: accepted
debits each account once through the ledger, refused releases the
reservation and marks the message FAILED, and an unknown outcome (timeout,
5xx) leaves it PENDING with the reservation held until a status check or a
delivery report settles it.

Status words: SCHEDULED and QUEUED wait for the queue (engine.jobs), SENDING
is being handed off, PENDING has an unknown hand-off outcome,
SENT_TO_PROVIDER, DELIVERED and UNDELIVERED were accepted (and charged),
FAILED and CANCELLED were not charged.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from zoneinfo import ZoneInfo

import asyncpg

from engine import charges, metrics
from engine.callerids import check_e164
from engine.charges import Charge
from engine.db import Database
from engine.errors import Conflict, InsufficientFunds, InvalidInput, NotFound
from engine.providers import sms_providers
from engine.providers.base import OutgoingSms, Outcome, SmsProvider, SmsResult
from engine.rating import candidate_prefixes
from engine.settings import Settings

log = logging.getLogger("callgate.sms")

# GSM 03.38: the default alphabet (one septet each) and the extension table,
# whose characters take an escape septet plus their own.
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")
# Units per single message and per part of a concatenated one: the user data
# header of a part takes 7 septets (GSM-7) or 3 UCS-2 characters.
SINGLE = {"GSM-7": 160, "UCS-2": 70}
PART = {"GSM-7": 153, "UCS-2": 67}
MAX_SEGMENTS = 10
MAX_RECIPIENTS = 10_000
MAX_SCHEDULE_AHEAD = timedelta(days=366)
# Queued hand-offs that found the provider unavailable are retried this many
# times, waiting RETRY_DELAY x attempts between tries.
MAX_ATTEMPTS = 5
RETRY_DELAY = timedelta(seconds=30)

SENDER_ALPHANUMERIC = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 .&_-]{0,10}$")
SENDER_NUMERIC = re.compile(r"^\+?[0-9]{3,15}$")
SENDER_EXPECTED = "1 to 11 letters and digits, or a number of 3 to 15 digits"
SENDER_WARNING = "Sender ID / Caller ID is not guaranteed."
REFERENCE_PREFIX = "callgate-sms-"

DELIVERED_WORDS = frozenset({"delivered"})
UNDELIVERED_WORDS = frozenset({"undelivered", "failed", "expired"})


class Status(StrEnum):
    SCHEDULED = "SCHEDULED"
    QUEUED = "QUEUED"
    SENDING = "SENDING"
    PENDING = "PENDING"
    SENT_TO_PROVIDER = "SENT_TO_PROVIDER"
    DELIVERED = "DELIVERED"
    UNDELIVERED = "UNDELIVERED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


# A delivery report or status check only moves a message forward.
RANK = {
    Status.SCHEDULED: 0,
    Status.QUEUED: 0,
    Status.SENDING: 1,
    Status.PENDING: 1,
    Status.SENT_TO_PROVIDER: 2,
    Status.DELIVERED: 3,
    Status.UNDELIVERED: 3,
    Status.FAILED: 3,
    Status.CANCELLED: 3,
}


class HandOff(StrEnum):
    """Where a provider result comes from; it decides what UNAVAILABLE means."""

    DIRECT = "direct"  # the send endpoint: fail at once
    QUEUED = "queued"  # the queue: retry later
    CHECK = "check"  # a status check: stay PENDING


@dataclass(frozen=True)
class Segments:
    encoding: str
    count: int
    units: int


def count_segments(text: str) -> Segments:
    """Return the encoding and segment count of a message.

    GSM-7 when every character is in the default alphabet or its extension
    table (extension characters count 2 septets), else UCS-2 (characters
    outside the Basic Multilingual Plane count 2 UTF-16 units). A 2-unit
    character is never split across two parts.
    """
    if all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in text):
        encoding = "GSM-7"
        sizes = [2 if ch in GSM7_EXTENSION else 1 for ch in text]
    else:
        encoding = "UCS-2"
        sizes = [2 if ord(ch) > 0xFFFF else 1 for ch in text]
    units = sum(sizes)
    if units <= SINGLE[encoding]:
        return Segments(encoding, 1, units)
    count, used = 1, 0
    for size in sizes:
        if used + size > PART[encoding]:
            count += 1
            used = 0
        used += size
    return Segments(encoding, count, units)


def check_sender_id(value: str | None) -> str | None:
    """Return a sender ID in form, or None; raise InvalidInput otherwise."""
    if value is None:
        return None
    sender = value.strip()
    if SENDER_ALPHANUMERIC.match(sender) or SENDER_NUMERIC.match(sender):
        return sender
    raise InvalidInput("sender_id", value, SENDER_EXPECTED)


def check_message(value: str) -> Segments:
    segments = count_segments(value)
    if segments.count > MAX_SEGMENTS:
        raise InvalidInput(
            "message",
            value,
            f"a text of at most {MAX_SEGMENTS} segments "
            f"({MAX_SEGMENTS * PART[segments.encoding]} {segments.encoding} units); "
            f"this one needs {segments.count}",
        )
    return segments


@dataclass(frozen=True)
class Schedule:
    """A scheduled time: the UTC instant and the server's offset at it."""

    at: datetime
    server_utc_offset: str
    local: datetime


def format_offset(offset: timedelta | None) -> str:
    """Format a UTC offset as +HH:MM or -HH:MM."""
    minutes = int((offset or timedelta(0)).total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    hours, minutes = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}:{minutes:02d}"


def parse_scheduled_at(value: str, zone: ZoneInfo, now: datetime) -> Schedule:
    """Read scheduled_at in the server's zone unless it carries an offset.

    A wall time that repeats when clocks go back is taken at its first
    occurrence; one skipped when clocks go forward is rejected.
    """
    expected = (
        "a future time YYYY-MM-DD HH:MM:SS in the server's time zone "
        f"({zone.key}), or with an offset such as 2026-05-09T23:00:00+03:00"
    )
    text = value.strip()
    if len(text) < 16:
        raise InvalidInput("scheduled_at", value, expected)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidInput("scheduled_at", value, expected) from exc
    if parsed.tzinfo is None:
        local = parsed.replace(tzinfo=zone)
        if local.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != parsed:
            raise InvalidInput(
                "scheduled_at",
                value,
                f"a time that exists in {zone.key} (clocks skip it); {expected}",
            )
        instant = local.astimezone(UTC)
    else:
        instant = parsed.astimezone(UTC)
    if instant <= now:
        raise InvalidInput("scheduled_at", value, f"{expected}; this time is past")
    if instant > now + MAX_SCHEDULE_AHEAD:
        raise InvalidInput(
            "scheduled_at", value, f"a time at most {MAX_SCHEDULE_AHEAD.days} days ahead"
        )
    local_time = instant.astimezone(zone)
    return Schedule(instant, format_offset(local_time.utcoffset()), local_time)


def reference_of(message_id: int) -> str:
    return f"{REFERENCE_PREFIX}{message_id}"


def message_id_of(reference: str) -> int | None:
    """Return the message id in a reference callgate-sms-<id>, else None."""
    if not reference.startswith(REFERENCE_PREFIX):
        return None
    digits = reference[len(REFERENCE_PREFIX) :]
    return int(digits) if digits.isascii() and digits.isdigit() else None


def accepted_status(provider_status: str | None) -> Status:
    """Map the status word of a provider that took a message to ours."""
    word = (provider_status or "").lower()
    if word in DELIVERED_WORDS:
        return Status.DELIVERED
    if word in UNDELIVERED_WORDS:
        return Status.UNDELIVERED
    return Status.SENT_TO_PROVIDER


# --- pricing ---------------------------------------------------------------

# A plan, then the plan it is derived from, and so on, each with the markup
# of the reseller that owns it and whether it has SMS rates of its own.
PLAN_LINEAGE = """
WITH RECURSIVE lineage AS (
    SELECT p.id, p.parent_plan_id, p.owner_id, 0 AS step
    FROM plans p
    WHERE p.id = $1
    UNION ALL
    SELECT p.id, p.parent_plan_id, p.owner_id, l.step + 1
    FROM lineage l
    JOIN plans p ON p.id = l.parent_plan_id
    WHERE l.step < 16
)
SELECT l.id, l.step, coalesce(a.markup, 0) AS markup,
       EXISTS (
           SELECT 1 FROM sms_rates r WHERE r.plan_id = l.id AND r.provider = $2
       ) AS has_rates
FROM lineage l
LEFT JOIN accounts a ON a.id = l.owner_id
ORDER BY l.step
"""

PLAN_SMS_RATES = """
SELECT prefix, destination, price
FROM sms_rates
WHERE plan_id = $1 AND provider = $2
ORDER BY prefix
"""

ACCOUNT_CHAIN = """
SELECT id, kind, login, ancestors, tenant_id, plan_id, balance, credit_limit,
       billing, reserved, status
FROM accounts
WHERE id = ANY($1::bigint[])
"""


@dataclass(frozen=True)
class SmsRate:
    """The price of one segment to destinations under a prefix."""

    prefix: str
    destination: str
    price: Decimal


async def plan_rates(
    connection: asyncpg.Connection, plan_id: int, provider: str
) -> dict[str, SmsRate]:
    """Return a plan's SMS rates for a provider by prefix, derived if need be.

    A plan without rows of its own for the provider takes its parent plan's
    prices x (1 + the owner's markup), half-up to 6 decimals, each level
    down a chain of resellers in turn.
    """
    markups: list[Decimal] = []
    for row in await connection.fetch(PLAN_LINEAGE, plan_id, provider):
        if not row["has_rates"]:
            markups.append(row["markup"])
            continue
        rates = {}
        for rate in await connection.fetch(PLAN_SMS_RATES, row["id"], provider):
            price = rate["price"]
            for markup in reversed(markups):
                price = charges.apply_markup(price, markup)
            rates[rate["prefix"]] = SmsRate(rate["prefix"], rate["destination"], price)
        return rates
    return {}


@dataclass
class ChainMember:
    account_id: int
    depth: int
    plan_id: int | None
    rates: dict[str, SmsRate]


@dataclass(frozen=True)
class Priced:
    """One recipient's price on every account of the chain."""

    phone: str
    prefix: str
    charges: tuple[Charge, ...]

    @property
    def price(self) -> Decimal:
        return self.charges[0].amount


def _longest_prefix(digits: str, rates: dict[str, SmsRate]) -> str | None:
    return next((p for p in candidate_prefixes(digits) if p in rates), None)


class PriceList:
    """The SMS rates of every account of a client's chain for one provider."""

    def __init__(self, provider: str, members: list[ChainMember]) -> None:
        self.provider = provider
        self.members = members

    @classmethod
    async def load(
        cls, connection: asyncpg.Connection, client_id: int, provider: str
    ) -> PriceList:
        client = await connection.fetchrow(ACCOUNT_CHAIN, [client_id])
        if client is None:
            raise NotFound(f"account {client_id} not found")
        chain_ids = [client_id, *client["ancestors"]]
        rows = {r["id"]: r for r in await connection.fetch(ACCOUNT_CHAIN, chain_ids)}
        members = []
        for depth, account_id in enumerate(chain_ids):
            plan_id = rows[account_id]["plan_id"]
            rates = await plan_rates(connection, plan_id, provider) if plan_id else {}
            members.append(ChainMember(account_id, depth, plan_id, rates))
        return cls(provider, members)

    def price(self, phone: str, segments: int) -> Priced:
        """Price a message to phone on every account; raise InvalidInput if unrated."""
        digits = phone.lstrip("+")
        found: list[Charge] = []
        client_prefix = ""
        for member in self.members:
            prefix = _longest_prefix(digits, member.rates)
            if prefix is None:
                raise InvalidInput(
                    "phone",
                    phone,
                    f"a destination with an SMS rate on provider {self.provider}",
                )
            if member.depth == 0:
                client_prefix = prefix
            amount = member.rates[prefix].price * segments
            found.append(Charge(member.account_id, member.depth, amount, member.plan_id))
        return Priced(phone, client_prefix, tuple(found))


# --- messages --------------------------------------------------------------

INSERT_MESSAGES = """
INSERT INTO sms_messages (
    account_id, tenant_id, campaign_id, provider, phone, sender_id, message,
    encoding, segments, prefix, price, status, due_at, scheduled_at, claimed_at
)
SELECT $1, $2, $3, $4, x.phone, $5, $6, $7, $8, x.prefix, x.price, $9, $10, $11,
       CASE WHEN $9 = 'SENDING' THEN now() END
FROM unnest($12::text[], $13::text[], $14::numeric[]) AS x (phone, prefix, price)
RETURNING *
"""

INSERT_CHARGES = """
INSERT INTO sms_charges (message_id, account_id, depth, plan_id, amount)
SELECT * FROM unnest(
    $1::bigint[], $2::bigint[], $3::smallint[], $4::bigint[], $5::numeric[]
)
"""

INSERT_CAMPAIGN = """
INSERT INTO sms_campaigns (
    account_id, tenant_id, provider, sender_id, message, scheduled_at,
    recipients, duplicates
)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
RETURNING *
"""

LOCK_MESSAGE = """
SELECT * FROM sms_messages WHERE id = $1 FOR UPDATE
"""

LOCK_OWN_SCHEDULED = """
SELECT * FROM sms_messages
WHERE id = $1 AND account_id = $2 AND campaign_id IS NULL
FOR UPDATE
"""

MESSAGE_CHARGES = """
SELECT account_id, depth, plan_id, amount
FROM sms_charges
WHERE message_id = $1
ORDER BY account_id
"""

MESSAGES_CHARGES = """
SELECT account_id, min(depth) AS depth, sum(amount) AS amount
FROM sms_charges
WHERE message_id = ANY($1::bigint[])
GROUP BY account_id
ORDER BY account_id
"""

UPDATE_MESSAGE = """
UPDATE sms_messages
SET status = $2, money = $3, provider_message_id = $4, provider_status = $5,
    error = $6, due_at = $7,
    sent_at = CASE WHEN $3 = 'charged' THEN coalesce(sent_at, now()) END,
    checked_at = now(), updated_at = now()
WHERE id = $1
RETURNING *
"""

CANCEL_MESSAGE = """
UPDATE sms_messages
SET status = 'CANCELLED', money = 'released', due_at = NULL, updated_at = now()
WHERE id = $1
RETURNING *
"""

LOCK_OWN_CAMPAIGN = """
SELECT * FROM sms_campaigns WHERE id = $1 AND account_id = $2 FOR UPDATE
"""

CANCEL_CAMPAIGN_MESSAGES = """
UPDATE sms_messages
SET status = 'CANCELLED', money = 'released', due_at = NULL, updated_at = now()
WHERE campaign_id = $1 AND status = 'QUEUED'
RETURNING id
"""

MARK_CAMPAIGN_CANCELLED = """
UPDATE sms_campaigns
SET cancelled = true, cancelled_at = now()
WHERE id = $1
"""

OWN_MESSAGE = """
SELECT * FROM sms_messages WHERE id = $1 AND account_id = $2
"""

FIND_BY_PROVIDER_ID = """
SELECT id FROM sms_messages WHERE provider = $1 AND provider_message_id = $2
ORDER BY id
LIMIT 1
"""

BALANCE = """
SELECT balance FROM accounts WHERE id = $1
"""


@dataclass(frozen=True)
class SmsRequest:
    """What a caller asks to send, before validation."""

    phone: str
    message: str
    provider: str | None = None
    sender_id: str | None = None


@dataclass(frozen=True)
class Draft:
    """A validated message, priced on the chain, not stored yet."""

    provider: SmsProvider
    sender_id: str | None
    text: str
    segments: Segments
    prices: PriceList
    tenant_id: int | None


@dataclass(frozen=True)
class Sent:
    """A message after its hand-off, with the client's balance afterwards."""

    message: asyncpg.Record
    balance_after: Decimal
    warning: str | None


@dataclass(frozen=True)
class ScheduledMessage:
    message: asyncpg.Record
    schedule: Schedule
    warning: str | None


@dataclass(frozen=True)
class CampaignCreated:
    campaign: asyncpg.Record
    recipients: int
    duplicates: list[str]
    warnings: list[str]
    schedule: Schedule | None


@dataclass(frozen=True)
class Transition:
    """The new state of a message after a provider result."""

    status: Status
    money: str
    provider_message_id: str | None
    provider_status: str | None
    error: str | None
    due_at: datetime | None


def next_state(
    row: asyncpg.Record | dict[str, object], result: SmsResult, source: HandOff
) -> Transition | None:
    """Return what a provider result does to a message, or None for nothing.

    Only a message with its reservation held (SENDING or PENDING) can be
    charged or released; on one already settled a report only moves the
    status forward, and the money stays as it is.
    """
    status = Status(str(row["status"]))
    money = str(row["money"])
    if status in (Status.SCHEDULED, Status.QUEUED, Status.CANCELLED):
        return None

    def to(new_status: Status, new_money: str, due_at: datetime | None = None) -> Transition:
        provider_id = result.provider_message_id or row["provider_message_id"]
        return Transition(
            new_status,
            new_money,
            str(provider_id) if provider_id is not None else None,
            result.provider_status or row["provider_status"],  # type: ignore[arg-type]
            result.error if new_status is not Status.SENT_TO_PROVIDER else None,
            due_at,
        )

    if money != "reserved":
        if result.outcome is Outcome.ACCEPTED:
            new_status = accepted_status(result.provider_status)
        elif result.outcome is Outcome.REFUSED:
            new_status = Status.FAILED
        else:
            return None
        if RANK[new_status] <= RANK[status]:
            return None
        return to(new_status, money)

    if result.outcome is Outcome.ACCEPTED:
        return to(accepted_status(result.provider_status), "charged")
    if result.outcome is Outcome.REFUSED:
        return to(Status.FAILED, "released")
    if result.outcome is Outcome.UNKNOWN or source is HandOff.CHECK:
        return to(Status.PENDING, "reserved")
    # UNAVAILABLE: nothing reached the provider.
    attempts = int(str(row["attempts"]))
    if source is HandOff.QUEUED and attempts < MAX_ATTEMPTS:
        waiting = Status.QUEUED if row["campaign_id"] is not None else Status.SCHEDULED
        return to(waiting, "reserved", datetime.now(UTC) + RETRY_DELAY * attempts)
    return to(Status.FAILED, "released")
