"""GET /v1/usage's period (calendar periods in UTC, or unix seconds, refused with a clear message
when wrong) and its body (a row per tenant and model, sorted, and their sums)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from router.gateway.ledger import UsageTotal
from router.gateway.usage_report import parse_period, usage_report

NOW = datetime(2026, 12, 31, 17, 45, 12, tzinfo=UTC).timestamp()  # a Thursday


def utc(*parts: int) -> float:
    return datetime(*parts, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(("query", "period"), [
    ({}, (utc(2026, 12, 31), utc(2027, 1, 1))),
    ({"period": "hour"}, (utc(2026, 12, 31, 17), utc(2026, 12, 31, 18))),
    ({"period": "day"}, (utc(2026, 12, 31), utc(2027, 1, 1))),
    ({"period": "week"}, (utc(2026, 12, 28), utc(2027, 1, 4))),
    ({"period": "month"}, (utc(2026, 12, 1), utc(2027, 1, 1))),
    ({"period": "all"}, (0.0, NOW)),
    ({"start_time": "1700000000", "end_time": "1700003600.5"}, (1_700_000_000.0, 1_700_003_600.5)),
    ({"start_time": "1700000000"}, (1_700_000_000.0, NOW)),
])
def test_periods(query, period):
    assert parse_period(query, NOW) == period


@pytest.mark.parametrize(("query", "message"), [
    ({"period": "year"}, "period 'year' is not one of hour, day, week, month, all"),
    ({"start_time": "yesterday"}, r"start_time must be unix seconds \(a number\), not 'yesterday'"),
    ({"start_time": "-5"}, "start_time must be unix seconds at or after 0"),
    ({"start_time": "nan"}, "start_time must be unix seconds at or after 0"),
    ({"end_time": "1700000000"}, "end_time needs a start_time"),
    ({"start_time": "20", "end_time": "10"}, r"end_time \(10\) must be after start_time \(20\)"),
    ({"period": "day", "start_time": "10"}, "either period or start_time/end_time, not both"),
])
def test_bad_periods_say_what_is_wrong(query, message):
    with pytest.raises(ValueError, match=message):
        parse_period(query, NOW)


def test_report_rows_are_sorted_and_summed():
    totals = [UsageTotal("globex", "small", 1, 3, 1), UsageTotal("acme", "small", 2, 20, 12),
              UsageTotal("acme", "large", 1, 100, 50)]
    assert usage_report(totals, 1_700_000_000.0, 1_700_003_600.9) == {
        "object": "usage",
        "start_time": 1_700_000_000,
        "end_time": 1_700_003_600,
        "data": [
            {"tenant": "acme", "model": "large", "requests": 1, "prompt_tokens": 100, "completion_tokens": 50,
             "total_tokens": 150},
            {"tenant": "acme", "model": "small", "requests": 2, "prompt_tokens": 20, "completion_tokens": 12,
             "total_tokens": 32},
            {"tenant": "globex", "model": "small", "requests": 1, "prompt_tokens": 3, "completion_tokens": 1,
             "total_tokens": 4},
        ],
        "total": {"requests": 4, "prompt_tokens": 123, "completion_tokens": 63, "total_tokens": 186},
    }


def test_an_empty_report_has_zero_sums():
    assert usage_report([], 0.0, NOW)["total"] == {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0,
                                                   "total_tokens": 0}
