"""SMS resale: segments, pricing, scheduling and the life of one message.

A message is priced per segment for every account of the chain: the client
pays its plan's price and each reseller above pays its own plan's. The price
is reserved on all of them in one transaction under row locks, and the
message is then handed to the provider outside any transaction.

The provider's response decides the money. Accepted debits each account once
through the ledger, and refused releases the reservation and marks the
message FAILED. An unknown outcome (timeout, 5xx) leaves it PENDING with the
reservation held until a status check or a delivery report settles it.

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
from engine.errors import Conflict, InvalidInput, NotFound
from engine.providers import sms_providers
from engine.providers.base import Outcome, OutgoingSms, SmsProvider, SmsResult
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
# Report words that mean the provider never took the message.
REFUSED_REPORTS = frozenset({"rejected", "refused", "invalid"})
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
            "scheduled_at",
            value,
            f"a time at most {MAX_SCHEDULE_AHEAD.days} days ahead",
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

    def price(self, phone: str, segments: int, field: str = "phone") -> Priced:
        """Price a message to phone on every account; raise InvalidInput if unrated."""
        digits = phone.lstrip("+")
        found: list[Charge] = []
        client_prefix = ""
        for member in self.members:
            prefix = _longest_prefix(digits, member.rates)
            if prefix is None:
                raise InvalidInput(
                    field,
                    phone,
                    f"a destination with an SMS rate on provider {self.provider}",
                )
            if member.depth == 0:
                client_prefix = prefix
            amount = member.rates[prefix].price * segments
            found.append(
                Charge(member.account_id, member.depth, amount, member.plan_id)
            )
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

GET_MESSAGE = """
SELECT * FROM sms_messages WHERE id = $1
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
    """A send request, before validation."""

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
    """Return the change a provider result makes to a message, or None.

    Only a message with its reservation held (SENDING or PENDING) can be
    charged or released. On a settled message a report only moves the status
    forward, and the money stays as it is.
    """
    status = Status(str(row["status"]))
    money = str(row["money"])
    if status in (Status.SCHEDULED, Status.QUEUED, Status.CANCELLED):
        return None

    def to(
        new_status: Status, new_money: str, due_at: datetime | None = None
    ) -> Transition:
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
        # NOTE: a message released after the provider denied knowing it (404)
        # and delivered later stays uncharged; only its status moves.
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


def _charges_of(rows: Sequence[asyncpg.Record]) -> list[Charge]:
    return [
        Charge(row["account_id"], row["depth"], row["amount"], row.get("plan_id"))
        for row in rows
    ]


def _counted(row: asyncpg.Record) -> None:
    metrics.sms_messages.labels(row["provider"], row["status"]).inc()


class SmsService:
    """Send, schedule, queue, cancel and settle SMS for client accounts.

    Every method takes the id of the client the message is for, which the API
    resolves from the key (a client's own, or a reseller's client_login). A
    message of another client raises NotFound.
    """

    def __init__(
        self,
        database: Database,
        settings: Settings,
        providers: dict[str, SmsProvider] | None = None,
    ) -> None:
        self.db = database
        self.settings = settings
        self.providers = sms_providers(settings) if providers is None else providers
        self.zone = ZoneInfo(settings.timezone)

    def provider(self, code: str | None) -> SmsProvider:
        """Return the provider of a code, the default one for None."""
        if not self.providers:
            raise InvalidInput(
                "provider", code, "a configured provider; this server has none"
            )
        if code is None:
            return next(iter(self.providers.values()))
        provider = self.providers.get(code)
        if provider is None:
            raise InvalidInput("provider", code, "one of: " + ", ".join(self.providers))
        return provider

    async def _draft(
        self,
        connection: asyncpg.Connection,
        client_id: int,
        message: str,
        provider_code: str | None,
        sender_id: str | None,
    ) -> Draft:
        provider = self.provider(provider_code)
        sender = check_sender_id(sender_id)
        segments = check_message(message)
        prices = await PriceList.load(connection, client_id, provider.code)
        tenant_id = await connection.fetchval(
            "SELECT tenant_id FROM accounts WHERE id = $1", client_id
        )
        return Draft(provider, sender, message, segments, prices, tenant_id)

    async def _store(
        self,
        connection: asyncpg.Connection,
        client_id: int,
        draft: Draft,
        priced: Sequence[Priced],
        status: Status,
        due_at: datetime | None,
        scheduled_at: datetime | None,
        campaign_id: int | None = None,
    ) -> list[asyncpg.Record]:
        """Insert messages with their charges; the caller has reserved them."""
        rows = await connection.fetch(
            INSERT_MESSAGES,
            client_id,
            draft.tenant_id,
            campaign_id,
            draft.provider.code,
            draft.sender_id,
            draft.text,
            draft.segments.encoding,
            draft.segments.count,
            str(status),
            due_at,
            scheduled_at,
            [item.phone for item in priced],
            [item.prefix for item in priced],
            [item.price for item in priced],
        )
        by_phone = {row["phone"]: row["id"] for row in rows}
        flat = [(by_phone[item.phone], c) for item in priced for c in item.charges]
        await connection.execute(
            INSERT_CHARGES,
            [message_id for message_id, _ in flat],
            [c.account_id for _, c in flat],
            [c.depth for _, c in flat],
            [c.plan_id for _, c in flat],
            [c.amount for _, c in flat],
        )
        for row in rows:
            _counted(row)
        return list(rows)

    async def _reserve(
        self, connection: asyncpg.Connection, priced: Sequence[Priced]
    ) -> None:
        all_charges = [c for item in priced for c in item.charges]
        chain_ids = sorted({c.account_id for c in all_charges})
        locked = await charges.lock_chain(connection, chain_ids)
        await charges.reserve(connection, locked, all_charges)

    async def send(self, client_id: int, request: SmsRequest) -> Sent:
        """Reserve, hand one message to the provider now and settle its money.

        Raises InvalidInput for a bad field and InsufficientFunds when an
        account of the chain cannot pay. A provider refusal returns the
        message FAILED, and a timeout returns it PENDING.
        """
        number = check_e164("phone", request.phone)
        async with self.db.pool.acquire() as connection:
            draft = await self._draft(
                connection,
                client_id,
                request.message,
                request.provider,
                request.sender_id,
            )
            priced = draft.prices.price(number.number, draft.segments.count)
            async with connection.transaction():
                await self._reserve(connection, [priced])
                (row,) = await self._store(
                    connection, client_id, draft, [priced], Status.SENDING, None, None
                )
        # The hand-off and its settlement run to the end even if the request
        # is cancelled, so a reservation is never left without an outcome.
        settled = await asyncio.shield(
            self.hand_off(draft.provider, row, HandOff.DIRECT)
        )
        return Sent(settled, await self.balance(client_id), number.warning)

    async def hand_off(
        self, provider: SmsProvider, row: asyncpg.Record, source: HandOff
    ) -> asyncpg.Record:
        """Give a stored message to its provider and apply the result."""
        outgoing = OutgoingSms(
            reference_of(row["id"]),
            row["phone"],
            row["sender_id"],
            row["message"],
            row["encoding"],
            row["segments"],
        )
        result = await provider.send(outgoing)
        return await self.apply_result(row["id"], result, source)

    async def apply_result(
        self, message_id: int, result: SmsResult, source: HandOff
    ) -> asyncpg.Record:
        """Apply a provider result to a message: charge, release or wait."""
        async with self.db.transaction() as connection:
            row = await connection.fetchrow(LOCK_MESSAGE, message_id)
            if row is None:
                raise NotFound(f"SMS {message_id} not found")
            change = next_state(row, result, source)
            if change is None:
                return row
            if change.money != row["money"]:
                await self._settle_money(connection, row, change)
            updated = await connection.fetchrow(
                UPDATE_MESSAGE,
                message_id,
                str(change.status),
                change.money,
                change.provider_message_id,
                change.provider_status,
                change.error,
                change.due_at,
            )
        if updated["status"] != row["status"]:
            _counted(updated)
            log.info(
                "sms status id=%s provider=%s %s -> %s money=%s source=%s error=%s",
                message_id,
                row["provider"],
                row["status"],
                updated["status"],
                updated["money"],
                source,
                change.error or "-",
            )
        return updated

    async def _settle_money(
        self, connection: asyncpg.Connection, row: asyncpg.Record, change: Transition
    ) -> None:
        chain = _charges_of(await connection.fetch(MESSAGE_CHARGES, row["id"]))
        await charges.lock_chain(connection, [c.account_id for c in chain])
        if change.money == "charged":
            await charges.debit(
                connection,
                chain,
                "sms",
                reference=reference_of(row["id"]),
                provider=row["provider"],
                provider_txid=change.provider_message_id,
            )
        else:
            await charges.release(connection, chain)

    async def balance(self, account_id: int) -> Decimal:
        async with self.db.pool.acquire() as connection:
            value: Decimal = await connection.fetchval(BALANCE, account_id)
        return value

    async def schedule(
        self, client_id: int, request: SmsRequest, scheduled_at: str
    ) -> ScheduledMessage:
        """Reserve a message now and queue it for its time."""
        when = parse_scheduled_at(scheduled_at, self.zone, datetime.now(UTC))
        number = check_e164("phone", request.phone)
        async with self.db.pool.acquire() as connection:
            draft = await self._draft(
                connection,
                client_id,
                request.message,
                request.provider,
                request.sender_id,
            )
            priced = draft.prices.price(number.number, draft.segments.count)
            async with connection.transaction():
                await self._reserve(connection, [priced])
                (row,) = await self._store(
                    connection,
                    client_id,
                    draft,
                    [priced],
                    Status.SCHEDULED,
                    when.at,
                    when.at,
                )
        log.info("sms scheduled id=%s at=%s", row["id"], when.at.isoformat())
        return ScheduledMessage(row, when, number.warning)

    async def cancel_scheduled(self, client_id: int, message_id: int) -> asyncpg.Record:
        """Cancel a SCHEDULED message and release its reservation."""
        async with self.db.transaction() as connection:
            row = await connection.fetchrow(LOCK_OWN_SCHEDULED, message_id, client_id)
            if row is None:
                raise NotFound(f"scheduled SMS {message_id} not found")
            if row["status"] != Status.SCHEDULED:
                raise Conflict(
                    f"scheduled SMS {message_id} is {row['status']}: only a "
                    "SCHEDULED message can be cancelled"
                )
            chain = _charges_of(await connection.fetch(MESSAGE_CHARGES, message_id))
            await charges.lock_chain(connection, [c.account_id for c in chain])
            await charges.release(connection, chain)
            cancelled = await connection.fetchrow(CANCEL_MESSAGE, message_id)
        _counted(cancelled)
        log.info("sms cancelled id=%s", message_id)
        return cancelled

    async def bulk(
        self,
        client_id: int,
        phones: Sequence[object],
        message: str,
        provider_code: str | None,
        sender_id: str | None,
        scheduled_at: str | None,
    ) -> CampaignCreated:
        """Validate every phone, drop duplicates, reserve all and queue a campaign."""
        now = datetime.now(UTC)
        when = (
            parse_scheduled_at(scheduled_at, self.zone, now) if scheduled_at else None
        )
        unique, duplicates, warnings = _recipients(phones)
        async with self.db.pool.acquire() as connection:
            draft = await self._draft(
                connection, client_id, message, provider_code, sender_id
            )
            priced = [
                draft.prices.price(phone, draft.segments.count, f"phones[{index}]")
                for index, phone in enumerate(unique)
            ]
            due_at = when.at if when else now
            async with connection.transaction():
                await self._reserve(connection, priced)
                campaign = await connection.fetchrow(
                    INSERT_CAMPAIGN,
                    client_id,
                    draft.tenant_id,
                    draft.provider.code,
                    draft.sender_id,
                    message,
                    due_at,
                    len(unique),
                    len(duplicates),
                )
                await self._store(
                    connection,
                    client_id,
                    draft,
                    priced,
                    Status.QUEUED,
                    due_at,
                    when.at if when else None,
                    campaign["id"],
                )
        log.info(
            "sms campaign queued id=%s recipients=%d duplicates=%d",
            campaign["id"],
            len(unique),
            len(duplicates),
        )
        return CampaignCreated(campaign, len(unique), duplicates, warnings, when)

    async def cancel_campaign(self, client_id: int, campaign_id: int) -> int:
        """Cancel what is left of a campaign; return how many messages it stopped."""
        async with self.db.transaction() as connection:
            campaign = await connection.fetchrow(
                LOCK_OWN_CAMPAIGN, campaign_id, client_id
            )
            if campaign is None:
                raise NotFound(f"campaign {campaign_id} not found")
            if campaign["cancelled"]:
                raise Conflict(f"campaign {campaign_id} is already cancelled")
            ids = [
                r["id"]
                for r in await connection.fetch(CANCEL_CAMPAIGN_MESSAGES, campaign_id)
            ]
            if not ids:
                raise Conflict(
                    f"campaign {campaign_id} has no queued message left to cancel"
                )
            totals = _charges_of(await connection.fetch(MESSAGES_CHARGES, ids))
            await charges.lock_chain(connection, [c.account_id for c in totals])
            await charges.release(connection, totals)
            await connection.execute(MARK_CAMPAIGN_CANCELLED, campaign_id)
        if ids:
            metrics.sms_messages.labels(campaign["provider"], Status.CANCELLED).inc(
                len(ids)
            )
        log.info("sms campaign cancelled id=%s messages=%d", campaign_id, len(ids))
        return len(ids)

    async def status(self, client_id: int, message_id: int) -> asyncpg.Record:
        """Return a message; a PENDING one is checked with its provider first."""
        async with self.db.pool.acquire() as connection:
            row = await connection.fetchrow(OWN_MESSAGE, message_id, client_id)
        if row is None:
            raise NotFound(f"SMS {message_id} not found")
        if row["status"] == Status.PENDING:
            row = await self.check(row)
        return row

    async def check(self, row: asyncpg.Record) -> asyncpg.Record:
        """Ask the provider about a PENDING message and apply the result."""
        provider = self.providers.get(row["provider"])
        if provider is None:
            log.warning(
                "sms status check skipped id=%s: provider %s is not configured",
                row["id"],
                row["provider"],
            )
            return row
        result = await provider.status(
            reference_of(row["id"]), row["provider_message_id"]
        )
        return await self.apply_result(row["id"], result, HandOff.CHECK)

    async def delivery_report(
        self,
        provider_code: str,
        provider_message_id: str | None,
        reference: str | None,
        status_word: str,
        error: str | None,
    ) -> asyncpg.Record:
        """Apply a provider's delivery report; raise NotFound for an unknown message."""
        message_id = message_id_of(reference) if reference else None
        async with self.db.pool.acquire() as connection:
            if message_id is None and provider_message_id:
                message_id = await connection.fetchval(
                    FIND_BY_PROVIDER_ID, provider_code, provider_message_id
                )
            row = None
            if message_id is not None:
                row = await connection.fetchrow(GET_MESSAGE, message_id)
        if row is None or row["provider"] != provider_code:
            raise NotFound("no SMS matches the delivery report")
        if (
            provider_message_id
            and row["provider_message_id"]
            and row["provider_message_id"] != provider_message_id
        ):
            raise NotFound("no SMS matches the delivery report")
        word = status_word.lower()
        outcome = Outcome.REFUSED if word in REFUSED_REPORTS else Outcome.ACCEPTED
        result = SmsResult(outcome, word, provider_message_id, error)
        return await self.apply_result(row["id"], result, HandOff.CHECK)

    async def history(
        self, client_id: int, limit: int, offset: int, campaign_id: int | None = None
    ) -> list[asyncpg.Record]:
        """Return a client's messages, newest first, or one campaign's."""
        async with self.db.pool.acquire() as connection:
            if campaign_id is None:
                rows = await connection.fetch(HISTORY, client_id, limit, offset)
            else:
                rows = await connection.fetch(
                    CAMPAIGN_MESSAGES, client_id, campaign_id, limit, offset
                )
        return list(rows)

    async def scheduled(
        self, client_id: int, limit: int, offset: int
    ) -> list[asyncpg.Record]:
        """Return a client's SCHEDULED single messages, soonest first."""
        async with self.db.pool.acquire() as connection:
            return list(await connection.fetch(SCHEDULED, client_id, limit, offset))

    async def campaigns(
        self, client_id: int, limit: int, offset: int, campaign_id: int | None = None
    ) -> list[asyncpg.Record]:
        """Return a client's campaigns, newest first, with counts by status."""
        async with self.db.pool.acquire() as connection:
            return list(
                await connection.fetch(CAMPAIGNS, client_id, limit, offset, campaign_id)
            )

    async def campaign(self, client_id: int, campaign_id: int) -> asyncpg.Record:
        rows = await self.campaigns(client_id, 1, 0, campaign_id)
        if not rows:
            raise NotFound(f"campaign {campaign_id} not found")
        return rows[0]

    async def rates(
        self, account_id: int, provider_code: str | None
    ) -> list[tuple[str, SmsRate]]:
        """Return the SMS rates of an account's own plan, by provider and prefix."""
        codes = (
            [self.provider(provider_code).code]
            if provider_code
            else list(self.providers)
        )
        found: list[tuple[str, SmsRate]] = []
        async with self.db.pool.acquire() as connection:
            plan_id = await connection.fetchval(
                "SELECT plan_id FROM accounts WHERE id = $1", account_id
            )
            for code in codes:
                if plan_id is None:
                    continue
                rates = await plan_rates(connection, plan_id, code)
                found.extend((code, rate) for rate in rates.values())
        return found

    async def quota(
        self, client_id: int, provider_code: str | None, phone: str | None
    ) -> Quota:
        """Estimate how many one-segment messages the client's balance covers.

        Each reseller above the client pays its own price per message, so the
        estimate is also capped by what every reseller's funds cover. The
        resellers' own figures are not returned.
        """
        provider = self.provider(provider_code)
        number = check_e164("phone", phone) if phone else None
        digits = number.number.lstrip("+") if number is not None else None
        async with self.db.pool.acquire() as connection:
            account = await connection.fetchrow(ACCOUNT_CHAIN, [client_id])
            plan_id = account["plan_id"]
            rates = (
                await plan_rates(connection, plan_id, provider.code) if plan_id else {}
            )
            resellers = await connection.fetch(
                ACCOUNT_CHAIN, list(account["ancestors"])
            )
            caps = [
                _reseller_cap(
                    reseller,
                    await plan_rates(connection, reseller["plan_id"], provider.code)
                    if reseller["plan_id"]
                    else {},
                    digits,
                )
                for reseller in resellers
            ]
        spendable = charges.available(account)
        prices = sorted(rate.price for rate in rates.values())
        price = None
        if digits is not None:
            prefix = _longest_prefix(digits, rates)
            if prefix is None:
                raise InvalidInput(
                    "phone",
                    phone,
                    f"a destination with an SMS rate on provider {provider.code}",
                )
            price = rates[prefix].price
        return Quota(
            provider.code,
            account["balance"],
            spendable,
            prices[0] if prices else None,
            prices[-1] if prices else None,
            price,
            _smallest([cap[0] for cap in caps]),
            _smallest([cap[1] for cap in caps]),
            _smallest([cap[2] for cap in caps]),
        )


def _reseller_cap(
    reseller: asyncpg.Record, rates: dict[str, SmsRate], digits: str | None
) -> tuple[int | None, int | None, int | None]:
    """Return the messages a reseller's funds cover at its max, min and given price."""
    available = charges.available(reseller)
    if reseller["status"] != "active":
        return 0, 0, 0
    prices = sorted(rate.price for rate in rates.values())
    at_phone = None
    if digits is not None:
        prefix = _longest_prefix(digits, rates)
        at_phone = Quota.messages(available, rates[prefix].price) if prefix else 0
    return (
        Quota.messages(available, prices[-1]) if prices else 0,
        Quota.messages(available, prices[0]) if prices else 0,
        at_phone,
    )


def _smallest(values: list[int | None]) -> int | None:
    limits = [value for value in values if value is not None]
    return min(limits) if limits else None


@dataclass(frozen=True)
class Quota:
    provider: str
    balance: Decimal
    available: Decimal
    price_min: Decimal | None
    price_max: Decimal | None
    price: Decimal | None
    # What the resellers' funds cover, at the max, min and given price (None:
    # no reseller, or no limit).
    resellers_min: int | None = None
    resellers_max: int | None = None
    resellers_at_price: int | None = None

    @staticmethod
    def messages(available: Decimal, price: Decimal | None) -> int | None:
        """Return how many messages at price fit in available; None if free."""
        if price is None or price == 0:
            return None
        return max(int(available // price), 0)

    @staticmethod
    def capped(count: int | None, cap: int | None) -> int | None:
        """Return count limited by cap, either of which may be None (no limit)."""
        if cap is None:
            return count
        return cap if count is None else min(count, cap)


def _recipients(phones: Sequence[object]) -> tuple[list[str], list[str], list[str]]:
    """Validate each phone; return the unique ones, the duplicates and warnings."""
    if not phones:
        raise InvalidInput("phones", "[]", "a list of 1 or more phone numbers")
    if len(phones) > MAX_RECIPIENTS:
        raise InvalidInput(
            "phones",
            f"<{len(phones)} numbers>",
            f"at most {MAX_RECIPIENTS} numbers per campaign",
        )
    unique: list[str] = []
    seen: set[str] = set()
    duplicates: list[str] = []
    warnings: list[str] = []
    for index, phone in enumerate(phones):
        field = f"phones[{index}]"
        if not isinstance(phone, str):
            raise InvalidInput(field, repr(phone), "a phone number as a string")
        number = check_e164(field, phone)
        if number.number in seen:
            duplicates.append(number.number)
            continue
        seen.add(number.number)
        unique.append(number.number)
        if number.warning:
            warnings.append(number.warning)
    return unique, duplicates, warnings


HISTORY = """
SELECT * FROM sms_messages
WHERE account_id = $1
ORDER BY id DESC
LIMIT $2 OFFSET $3
"""

CAMPAIGN_MESSAGES = """
SELECT * FROM sms_messages
WHERE account_id = $1 AND campaign_id = $2
ORDER BY id
LIMIT $3 OFFSET $4
"""

SCHEDULED = """
SELECT * FROM sms_messages
WHERE account_id = $1 AND campaign_id IS NULL AND status = 'SCHEDULED'
ORDER BY due_at, id
LIMIT $2 OFFSET $3
"""

# Counts by status come from the messages, so a campaign's state is never
# stored twice.
CAMPAIGNS = """
SELECT c.*,
       coalesce(s.counts, '{}'::jsonb) AS counts,
       coalesce(s.price, 0) AS price
FROM sms_campaigns c
LEFT JOIN LATERAL (
    SELECT jsonb_object_agg(g.status, g.n) AS counts, sum(g.price) AS price
    FROM (
        SELECT status, count(*) AS n, sum(price) AS price
        FROM sms_messages
        WHERE campaign_id = c.id
        GROUP BY status
    ) AS g
) AS s ON true
WHERE c.account_id = $1 AND ($4::bigint IS NULL OR c.id = $4)
ORDER BY c.id DESC
LIMIT $2 OFFSET $3
"""


def campaign_status(campaign: asyncpg.Record, counts: dict[str, int]) -> str:
    """Return QUEUED, SENDING, DONE or CANCELLED from a campaign's counts."""
    if campaign["cancelled"]:
        return "CANCELLED"
    waiting = counts.get(Status.QUEUED, 0)
    if waiting == campaign["recipients"]:
        return "QUEUED"
    if waiting or counts.get(Status.SENDING, 0):
        return "SENDING"
    return "DONE"
