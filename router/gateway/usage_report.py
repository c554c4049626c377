"""The answer of GET /v1/usage: a period read from the query (`start_time`/`end_time` in unix
seconds, or `period=hour|day|week|month|all`, the current calendar one in UTC; the current day
by default), and the usage totals of that period as a JSON body."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from router.gateway.usage_record import UsageTotal

PERIODS = ("hour", "day", "week", "month", "all")
DEFAULT_PERIOD = "day"
COUNTS = ("requests", "prompt_tokens", "completion_tokens", "total_tokens")


def parse_period(query: Mapping[str, str], now: float) -> tuple[float, float]:
    """[start, end) in unix seconds; ValueError saying what is wrong with the query."""
    if "start_time" in query or "end_time" in query:
        if "period" in query:
            raise ValueError("give either period or start_time/end_time, not both")
        if "start_time" not in query:
            raise ValueError("end_time needs a start_time (unix seconds)")
        start = _unix_seconds(query, "start_time")
        end = _unix_seconds(query, "end_time") if "end_time" in query else now
        if end <= start:
            raise ValueError(f"end_time ({end:g}) must be after start_time ({start:g})")
        return start, end
    return calendar_period(query.get("period", DEFAULT_PERIOD), now)


def calendar_period(period: str, now: float) -> tuple[float, float]:
    """The hour, day, ISO week (from Monday) or month in UTC that `now` falls in; `all`: up to now."""
    if period == "all":
        return 0.0, now
    moment = datetime.fromtimestamp(now, UTC)
    if period == "hour":
        start = moment.replace(minute=0, second=0, microsecond=0)
        end = start + timedelta(hours=1)
    elif period == "day":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=1)
    elif period == "week":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=moment.weekday())
        end = start + timedelta(weeks=1)
    elif period == "month":
        start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    else:
        raise ValueError(f"period {period!r} is not one of {', '.join(PERIODS)}")
    return start.timestamp(), end.timestamp()


def usage_report(totals: list[UsageTotal], start: float, end: float) -> dict:
    """The body of GET /v1/usage: a row per tenant and model, sorted, and their sums."""
    rows = [_row(total) for total in sorted(totals, key=lambda total: (total.tenant, total.model))]
    return {
        "object": "usage",
        "start_time": int(start),
        "end_time": int(end),
        "data": rows,
        "total": {count: sum(row[count] for row in rows) for count in COUNTS},
    }


def _row(total: UsageTotal) -> dict:
    return {"tenant": total.tenant, "model": total.model, "requests": total.requests,
            "prompt_tokens": total.prompt_tokens, "completion_tokens": total.completion_tokens,
            "total_tokens": total.total_tokens}


def _unix_seconds(query: Mapping[str, str], name: str) -> float:
    text = query[name]
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name} must be unix seconds (a number), not {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be unix seconds at or after 0, not {text!r}")
    return value
