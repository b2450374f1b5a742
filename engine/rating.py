"""Rating: number normalization, billed seconds, call cost and affordable time.

Money is Decimal end to end. A call's cost is computed exactly and rounded
once, with the plan's decimals and rounding method. "Affordable" uses the
same rounding, so a reservation is exactly what settle will charge.
"""

from __future__ import annotations

import decimal
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_UP, ROUND_UP, Decimal

from engine.errors import InvalidInput

ROUNDING_METHODS = {"half-up": ROUND_HALF_UP, "up": ROUND_UP, "down": ROUND_DOWN}

# Enough digits that an exact cost / 60 is never rounded before the one
# rounding settle applies: balances have 14 integer digits at most.
_EXACT = decimal.Context(prec=60, rounding=ROUND_HALF_UP)
_SIXTY = Decimal(60)
_STRIPPED = str.maketrans("", "", " -().")
MAX_NUMBER_DIGITS = 32


@dataclass(frozen=True, slots=True)
class Rate:
    """One prefix row of a plan: price per minute and the billing grid."""

    prefix: str
    destination: str
    rate: Decimal
    initblock: int
    billingblock: int
    connect_fee: Decimal


@dataclass(frozen=True, slots=True)
class Tariff:
    """The plan settings that decide how a rate turns into a cost."""

    free_seconds: int = 0
    decimals: int = 6
    rounding: str = "half-up"

    def quantize(self, amount: Decimal) -> Decimal:
        exponent = Decimal(1).scaleb(-self.decimals)
        return amount.quantize(exponent, rounding=ROUNDING_METHODS[self.rounding])


def normalize(number: str, intl_prefix: str = "00") -> str:
    """Return the digits a number is rated on.

    Strips the characters `` -().``, then a leading ``+`` or the plan's
    international prefix: ``+44…``, ``0044…`` and ``44…`` all give ``44…``.
    """
    cleaned = number.strip().translate(_STRIPPED)
    if cleaned.startswith("+"):
        cleaned = cleaned[1:]
    elif intl_prefix and cleaned.startswith(intl_prefix):
        cleaned = cleaned[len(intl_prefix) :]
    if not cleaned or not cleaned.isascii() or not cleaned.isdigit():
        raise InvalidInput("number", number, "digits, optionally with a leading +")
    if len(cleaned) > MAX_NUMBER_DIGITS:
        raise InvalidInput(
            "number", number, f"at most {MAX_NUMBER_DIGITS} digits after normalization"
        )
    return cleaned


def candidate_prefixes(digits: str, max_length: int = 15) -> list[str]:
    """Return every prefix of digits a rate could be keyed on, longest first."""
    longest = min(len(digits), max_length)
    return [digits[:length] for length in range(longest, 0, -1)]


def longest_prefix(digits: str, prefixes: set[str] | dict[str, object]) -> str | None:
    """Return the longest prefix of digits found in prefixes (longest wins)."""
    for candidate in candidate_prefixes(digits):
        if candidate in prefixes:
            return candidate
    return None


def billed_seconds(answered: int, rate: Rate, free_seconds: int = 0) -> int:
    """Return the seconds charged for answered seconds of talk.

    At or under the free seconds nothing is billed; above them the whole call
    is. Up to the initial block the block is billed, then whole increments.
    """
    if answered < 0:
        raise ValueError(f"answered seconds must not be negative: {answered}")
    if answered <= free_seconds:
        return 0
    if answered <= rate.initblock:
        return rate.initblock
    over = answered - rate.initblock
    increments = -(-over // rate.billingblock)
    return rate.initblock + increments * rate.billingblock


def exact_cost(billed: int, rate: Rate) -> Decimal:
    """Return connect fee + billed seconds x rate per minute / 60, unrounded."""
    if billed == 0:
        return Decimal(0)
    per_minute = _EXACT.multiply(rate.rate, Decimal(billed))
    return _EXACT.add(rate.connect_fee, _EXACT.divide(per_minute, _SIXTY))


def call_cost(answered: int, rate: Rate, tariff: Tariff) -> Decimal:
    """Return what answered seconds cost, rounded once as the plan says."""
    billed = billed_seconds(answered, rate, tariff.free_seconds)
    if billed == 0:
        return tariff.quantize(Decimal(0))
    return tariff.quantize(exact_cost(billed, rate))


def grid_cost(seconds: int, rate: Rate, tariff: Tariff) -> Decimal:
    """Return the rounded cost of seconds of talk, ignoring free seconds.

    Affordability and reservations use this: a call that may go past the
    free seconds must be funded as if none were free.
    """
    return call_cost(seconds, rate, Tariff(0, tariff.decimals, tariff.rounding))


def minimum_block(rate: Rate) -> int:
    """Return the shortest billable talk time: the initial block (or one increment)."""
    return rate.initblock if rate.initblock > 0 else rate.billingblock


def affordable_seconds(
    available: Decimal, rate: Rate, tariff: Tariff, cap: int
) -> int | None:
    """Return the most seconds an account can pay for, at most cap.

    The answer is a point of the billing grid (initial block plus whole
    increments), so its cost is exactly what settle charges for that talk
    time. None means the account cannot pay the connect fee plus the initial
    block.
    """
    first = minimum_block(rate)
    if grid_cost(first, rate, tariff) > available:
        return None
    if rate.rate == 0:
        return cap
    if first >= cap:
        return cap

    # Solve connect_fee + s * rate / 60 <= available for s, then walk to the
    # grid point the rounded cost allows; rounding moves it by a step or so.
    budget = _EXACT.subtract(available, rate.connect_fee)
    estimate = int(_EXACT.divide(_EXACT.multiply(budget, _SIXTY), rate.rate))
    step = rate.billingblock
    steps = max(0, (estimate - first) // step)
    seconds = first + steps * step
    while seconds > first and grid_cost(seconds, rate, tariff) > available:
        seconds -= step
    while seconds + step <= cap + step and (
        grid_cost(seconds + step, rate, tariff) <= available
    ):
        seconds += step
        if seconds >= cap:
            return cap
    return min(seconds, cap)


def format_money(amount: Decimal, places: int = 4) -> str:
    """Return amount as a display string, rounded half-up (display only)."""
    exponent = Decimal(1).scaleb(-places)
    return str(amount.quantize(exponent, rounding=ROUND_HALF_UP))
