"""Rating rules: normalization, billed seconds, cost and affordable time."""

from __future__ import annotations

from decimal import Decimal

import pytest

from engine import rating
from engine.errors import InvalidInput, SettingsError
from engine.rating import Rate, Tariff
from engine.settings import load_settings


def rate(per_minute: str, initblock: int, billingblock: int, fee: str = "0") -> Rate:
    return Rate("1", "test", Decimal(per_minute), initblock, billingblock, Decimal(fee))


@pytest.mark.parametrize(
    ("answered", "expected"),
    [(32, "0.0036"), (57, "0.0060"), (75, "0.0078"), (30, "0.0030"), (1, "0.0030")],
)
def test_cost_thirty_six_grid(answered: int, expected: str):
    cost = rating.call_cost(answered, rate("0.006", 30, 6), Tariff(decimals=4))

    assert cost == Decimal(expected)


def test_cost_connect_fee_rounded_up():
    cost = rating.call_cost(
        30, rate("0.05", 1, 1, "0.15"), Tariff(decimals=2, rounding="up")
    )

    assert cost == Decimal("0.18")


@pytest.mark.parametrize(
    ("method", "expected"),
    [("half-up", "0.025417"), ("up", "0.025417"), ("down", "0.025416")],
)
def test_cost_rounding_methods(method: str, expected: str):
    cost = rating.call_cost(61, rate("0.025", 1, 1), Tariff(rounding=method))

    assert cost == Decimal(expected)


def test_cost_half_up_on_exact_half():
    # 61 s at 0.03/min is exactly 0.0305; 3 decimals half-up gives 0.031.
    assert rating.call_cost(61, rate("0.03", 1, 1), Tariff(decimals=3)) == Decimal(
        "0.031"
    )
    assert rating.call_cost(
        61, rate("0.03", 1, 1), Tariff(decimals=3, rounding="down")
    ) == (Decimal("0.030"))


@pytest.mark.parametrize(
    ("answered", "free", "expected"),
    [
        (0, 0, 0),
        (5, 10, 0),
        (10, 10, 0),
        (11, 10, 30),
        (29, 0, 30),
        (31, 0, 36),
        (36, 0, 36),
        (37, 0, 42),
    ],
)
def test_billed_seconds(answered: int, free: int, expected: int):
    assert rating.billed_seconds(answered, rate("1", 30, 6), free) == expected


def test_free_seconds_skip_connect_fee():
    tariff = Tariff(free_seconds=10)

    assert rating.call_cost(10, rate("0.60", 1, 1, "0.50"), tariff) == Decimal(
        "0.000000"
    )
    assert rating.call_cost(11, rate("0.60", 1, 1, "0.50"), tariff) == Decimal(
        "0.610000"
    )


@pytest.mark.parametrize(
    ("available", "per_minute", "grid", "cap", "expected"),
    [
        ("1.00", "0.50", (1, 1), 10800, 120),
        ("0.01", "0.04", (60, 60), 10800, None),
        ("0.12", "0.04", (60, 60), 10800, 180),
        ("0.12", "0.04", (60, 60), 60, 60),
        ("0.0036", "0.006", (30, 6), 10800, 36),
        ("0.0035", "0.006", (30, 6), 10800, 30),
        ("5", "0", (1, 1), 3600, 3600),
        ("0", "0", (1, 1), 3600, 3600),
    ],
)
def test_affordable_seconds(
    available: str,
    per_minute: str,
    grid: tuple[int, int],
    cap: int,
    expected: int | None,
):
    found = rating.affordable_seconds(
        Decimal(available), rate(per_minute, *grid), Tariff(), cap
    )

    assert found == expected


@pytest.mark.parametrize("method", ["half-up", "up", "down"])
@pytest.mark.parametrize("available", ["0.2599", "1.2345", "7.000001", "0.333333"])
def test_affordable_cost_never_exceeds_available(method: str, available: str):
    tariff = Tariff(decimals=4, rounding=method)
    billing = rate("0.4711", 30, 6, "0.0123")

    seconds = rating.affordable_seconds(Decimal(available), billing, tariff, 100_000)

    assert seconds is not None
    assert rating.grid_cost(seconds, billing, tariff) <= Decimal(available)
    assert rating.grid_cost(seconds + 6, billing, tariff) > Decimal(available)


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        ("+44 20 7946 0000", "442079460000"),
        ("0044 20 7946-0000", "442079460000"),
        ("44(20)7946.0000", "442079460000"),
        ("15555550101", "15555550101"),
    ],
)
def test_normalize_strips_prefix_and_punctuation(number: str, expected: str):
    assert rating.normalize(number) == expected


def test_normalize_uses_plan_international_prefix():
    assert rating.normalize("01144123", "011") == "44123"
    assert rating.normalize("0044123", "011") == "0044123"


@pytest.mark.parametrize("number", ["", "+", "abc", "44*123", "٤٤١٢٣", "1" * 40])
def test_normalize_rejects_garbage(number: str):
    with pytest.raises(InvalidInput):
        rating.normalize(number)


def test_longest_prefix_not_cheapest():
    prefixes = {"1": Decimal("0.01"), "1234": Decimal("0.20")}

    assert rating.longest_prefix("1234567890123", prefixes) == "1234"
    assert rating.longest_prefix("1299", prefixes) == "1"
    assert rating.longest_prefix("44", prefixes) is None


def test_settings_defaults():
    settings = load_settings({})

    assert settings.agi_listen == ("127.0.0.1", 4573)
    assert settings.api_listen == ("127.0.0.1", 8080)
    assert settings.max_call_duration == 10800
    assert settings.ring_timeout == 60
    assert settings.agi_deadline == 2.0
    assert settings.currency == "EUR"
    assert settings.debit_interval == 60
    assert settings.ami_url is None


def test_settings_environment_wins_over_file(tmp_path):
    path = tmp_path / "callgate.toml"
    path.write_text('max_call_duration = 3600\ncurrency = "USD"\n')

    settings = load_settings(
        {"CALLGATE_SETTINGS": str(path), "CALLGATE_CURRENCY": "GBP"}
    )

    assert settings.max_call_duration == 3600
    assert settings.currency == "GBP"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CALLGATE_MAX_CALL_DURATION", "-5"),
        ("CALLGATE_AGI_LISTEN", "localhost"),
        ("CALLGATE_CURRENCY", "euro"),
        ("CALLGATE_AMI_URL", "http://x"),
        ("CALLGATE_RING_TIMEOUT", "0"),
        ("CALLGATE_TRUSTED_PROXIES", "not-a-net"),
    ],
)
def test_settings_invalid_value_named(name: str, value: str):
    with pytest.raises(SettingsError, match=name):
        load_settings({name: value})


def test_settings_unknown_file_key_rejected(tmp_path):
    path = tmp_path / "callgate.toml"
    path.write_text("max_call_durations = 5\n")

    with pytest.raises(SettingsError, match="max_call_durations"):
        load_settings({"CALLGATE_SETTINGS": str(path)})
