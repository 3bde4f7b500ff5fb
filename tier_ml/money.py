"""Money and time as exact integers.

Every code path (the reference replay, the DuckDB batch path, the store) turns
amounts into integer *micro-units* of the policy's base currency and instants
into integer microseconds since the Unix epoch (UTC). Sums of integers do not
depend on the order they are added in, so two paths that visit events in a
different order still agree to the last digit, and a threshold such as
``min_spend: 20000`` is compared exactly.

The conversion of one amount is defined as ``floor(amount * rate * 1e6 + 0.5)``
evaluated in IEEE doubles in exactly that order; SQL engines evaluate the same
expression with the same doubles, so they produce the same integers.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

MICROS_PER_UNIT = 1_000_000
MICROS_PER_DAY = 86_400 * 1_000_000
#: An event's amount in the base currency must be below this: micro-units are 64-bit integers
#: (up to 9.2e12 units), and the sum of a customer's orders must fit too. A larger amount is
#: rejected as ``unparseable_amount`` on every path (it is not an amount tier-ml can hold).
MAX_AMOUNT = 1e12
MAX_AMOUNT_TEXT = "10^12"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_micros(amount: float, rate: float = 1.0) -> int:
    """Convert an amount in some currency to base-currency micro-units."""
    return math.floor(amount * rate * 1e6 + 0.5)


def micros_to_money(micros: int) -> float:
    """Round micro-units to cents (half up) and return them as a float for output."""
    cents = (micros + 5_000) // 10_000
    return cents / 100


def days_to_micros(days: float) -> int:
    """A policy duration in days as microseconds."""
    return round(days * MICROS_PER_DAY)


def instant_to_micros(instant: datetime) -> int:
    """A timezone-aware datetime as microseconds since the epoch (naive means UTC)."""
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    delta = instant - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def micros_to_instant(micros: int) -> datetime:
    """Microseconds since the epoch as an aware UTC datetime."""
    return EPOCH + timedelta(microseconds=micros)
