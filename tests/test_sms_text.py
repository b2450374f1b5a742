"""SMS segments, sender IDs, scheduled times across DST, and the status rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from engine.errors import InvalidInput
from engine.providers.base import Outcome, SmsResult
from engine.sms import (
    HandOff,
    Status,
    check_message,
    check_sender_id,
    count_segments,
    format_offset,
    message_id_of,
    next_state,
    parse_scheduled_at,
    reference_of,
)

BERLIN = ZoneInfo("Europe/Berlin")
NOW = datetime(2030, 12, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "encoding", "segments"),
    [
        ("a" * 160, "GSM-7", 1),
        ("a" * 161, "GSM-7", 2),
        ("a" * 306, "GSM-7", 2),
        ("a" * 307, "GSM-7", 3),
        ("€" * 80, "GSM-7", 1),
        ("€" * 81, "GSM-7", 2),
        ("[]{}^~|\\", "GSM-7", 1),
        ("Grüße, Ñandù! ¿Què? @£$¥", "GSM-7", 1),
        ("Ñandú", "UCS-2", 1),
        ("ж" * 70, "UCS-2", 1),
        ("ж" * 71, "UCS-2", 2),
        ("ж" * 134, "UCS-2", 2),
        ("ж" * 135, "UCS-2", 3),
        ("😀" * 35, "UCS-2", 1),
        ("😀" * 36, "UCS-2", 2),
        ("ç", "UCS-2", 1),
    ],
)
def test_segments_counted(text: str, encoding: str, segments: int):
    counted = count_segments(text)

    assert counted.encoding == encoding
    assert counted.count == segments


def test_segments_extension_not_split():
    # 306 septets fit two 153-septet parts only if the pair were split.
    counted = count_segments("a" * 152 + "€" + "a" * 152)

    assert counted.units == 306
    assert counted.count == 3


def test_segments_emoji_not_split():
    # 134 units fit two 67-unit parts only if the emoji's pair were split.
    counted = count_segments("ж" * 66 + "😀" + "ж" * 66)

    assert counted.units == 134
    assert counted.count == 3


def test_message_too_long_rejected():
    with pytest.raises(InvalidInput, match="at most 10 segments"):
        check_message("a" * (153 * 10 + 1))


@pytest.mark.parametrize("sender", ["MyBrand", "A", "Brand 2 Go", "+447575396991"])
def test_sender_id_accepted(sender: str):
    assert check_sender_id(sender) == sender


@pytest.mark.parametrize("sender", ["", "TwelveLetter", "My/Brand", "+12"])
def test_sender_id_rejected(sender: str):
    with pytest.raises(InvalidInput):
        check_sender_id(sender)


def test_schedule_berlin_winter_and_summer():
    winter = parse_scheduled_at("2031-01-15 09:00:00", BERLIN, NOW)
    summer = parse_scheduled_at("2031-07-15 09:00:00", BERLIN, NOW)

    assert winter.at == datetime(2031, 1, 15, 8, 0, tzinfo=UTC)
    assert winter.server_utc_offset == "+01:00"
    assert summer.at == datetime(2031, 7, 15, 7, 0, tzinfo=UTC)
    assert summer.server_utc_offset == "+02:00"


def test_schedule_offset_wins_over_zone():
    scheduled = parse_scheduled_at("2031-07-15T09:00:00+03:00", BERLIN, NOW)

    assert scheduled.at == datetime(2031, 7, 15, 6, 0, tzinfo=UTC)
    assert scheduled.server_utc_offset == "+02:00"


def test_schedule_utc_z_suffix():
    scheduled = parse_scheduled_at("2031-07-15T09:00:00Z", ZoneInfo("UTC"), NOW)

    assert scheduled.at == datetime(2031, 7, 15, 9, 0, tzinfo=UTC)
    assert scheduled.server_utc_offset == "+00:00"


def test_schedule_skipped_time_rejected():
    # Berlin clocks jump from 02:00 to 03:00 on 2031-03-30.
    with pytest.raises(InvalidInput, match="clocks skip it"):
        parse_scheduled_at("2031-03-30 02:30:00", BERLIN, NOW)


def test_schedule_repeated_time_first_occurrence():
    # Berlin clocks go back from 03:00 to 02:00 on 2031-10-26.
    scheduled = parse_scheduled_at("2031-10-26 02:30:00", BERLIN, NOW)

    assert scheduled.at == datetime(2031, 10, 26, 0, 30, tzinfo=UTC)
    assert scheduled.server_utc_offset == "+02:00"


@pytest.mark.parametrize(
    "value",
    ["2029-12-31 23:59:59", "2030-12-01 01:00:00", "2032-06-01 00:00:00", "soon"],
)
def test_schedule_past_or_far_rejected(value: str):
    # 2030-12-01 01:00 in Berlin is 00:00 UTC, which is now.
    with pytest.raises(InvalidInput, match="scheduled_at"):
        parse_scheduled_at(value, BERLIN, NOW)


def test_offset_formatting():
    assert format_offset(timedelta(hours=3)) == "+03:00"
    assert format_offset(timedelta(hours=-5, minutes=-30)) == "-05:30"
    assert format_offset(None) == "+00:00"


def test_reference_round_trip():
    assert message_id_of(reference_of(42)) == 42
    assert message_id_of("callgate-sms-x") is None
    assert message_id_of("other-42") is None


def row(status: Status, money: str = "reserved", **extra: object) -> dict[str, object]:
    values: dict[str, object] = {
        "status": str(status),
        "money": money,
        "provider_message_id": None,
        "provider_status": None,
        "attempts": 1,
        "campaign_id": None,
    }
    values.update(extra)
    return values


ACCEPTED = SmsResult(Outcome.ACCEPTED, "accepted", "p1")
DELIVERED = SmsResult(Outcome.ACCEPTED, "delivered", "p1")
REFUSED = SmsResult(Outcome.REFUSED, "rejected", None, "bad number")
UNKNOWN = SmsResult(Outcome.UNKNOWN, error="provider timed out")
UNAVAILABLE = SmsResult(Outcome.UNAVAILABLE, error="provider unreachable")


def test_state_accepted_charges():
    change = next_state(row(Status.SENDING), ACCEPTED, HandOff.DIRECT)

    assert change is not None
    assert (change.status, change.money) == (Status.SENT_TO_PROVIDER, "charged")
    assert change.provider_message_id == "p1"


def test_state_refused_releases():
    change = next_state(row(Status.SENDING), REFUSED, HandOff.DIRECT)

    assert change is not None
    assert (change.status, change.money) == (Status.FAILED, "released")
    assert change.error == "bad number"


def test_state_unknown_holds():
    change = next_state(row(Status.SENDING), UNKNOWN, HandOff.DIRECT)

    assert change is not None
    assert (change.status, change.money) == (Status.PENDING, "reserved")


def test_state_unavailable_by_source():
    direct = next_state(row(Status.SENDING), UNAVAILABLE, HandOff.DIRECT)
    queued = next_state(row(Status.SENDING), UNAVAILABLE, HandOff.QUEUED)
    campaign = next_state(
        row(Status.SENDING, campaign_id=3), UNAVAILABLE, HandOff.QUEUED
    )
    exhausted = next_state(row(Status.SENDING, attempts=5), UNAVAILABLE, HandOff.QUEUED)
    check = next_state(row(Status.PENDING), UNAVAILABLE, HandOff.CHECK)

    assert direct is not None and direct.status is Status.FAILED
    assert queued is not None and queued.status is Status.SCHEDULED
    assert queued.money == "reserved" and queued.due_at is not None
    assert campaign is not None and campaign.status is Status.QUEUED
    assert exhausted is not None and exhausted.status is Status.FAILED
    assert check is not None and check.status is Status.PENDING


def test_state_report_only_moves_forward():
    delivered = next_state(
        row(Status.SENT_TO_PROVIDER, "charged"), DELIVERED, HandOff.CHECK
    )
    back = next_state(row(Status.DELIVERED, "charged"), ACCEPTED, HandOff.CHECK)
    late = next_state(row(Status.FAILED, "released"), DELIVERED, HandOff.CHECK)

    assert delivered is not None
    assert (delivered.status, delivered.money) == (Status.DELIVERED, "charged")
    assert back is None
    assert late is None


def test_state_waiting_messages_ignore_reports():
    for status in (Status.SCHEDULED, Status.QUEUED, Status.CANCELLED):
        assert next_state(row(status), DELIVERED, HandOff.CHECK) is None
