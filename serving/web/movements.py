"""Tier movements over time for the overview chart, counted in the store's audit log.

One grouped query (week, old tier, new tier) over the audit rows that took effect
in the window, so the chart costs the same for ten or ten million customers;
the direction of each change comes from the active policy's tier order.
Weeks start on Monday (UTC).
"""

from __future__ import annotations

from sqlalchemy import Engine, Table, func, select

from serving.web.charts import WeekMovement
from tier_ml.money import micros_to_instant
from tier_ml.policy import Policy
from tier_ml.store.models import AuditRow
from tier_ml.store.unit_of_work import run_in_transaction

AUDIT: Table = AuditRow.__table__  # type: ignore[assignment]
DAY_US = 86_400 * 1_000_000
WEEK_US = 7 * DAY_US
#: The Unix epoch was a Thursday: shift by three days so weeks start on Monday.
MONDAY_SHIFT_US = 3 * DAY_US


def week_index(at_us: int) -> int:
    return (at_us + MONDAY_SHIFT_US) // WEEK_US


def week_start_us(index: int) -> int:
    return index * WEEK_US - MONDAY_SHIFT_US


def weekly_movements(
    engine: Engine, policy: Policy, now_us: int, weeks: int = 26
) -> list[WeekMovement]:
    """Upgrades and downgrades per week for the ``weeks`` weeks up to ``now_us`` (oldest first).

    Enrolments (no old tier) are not movements; a change between tiers the
    active policy does not know (a renamed tier) is left out.
    """
    last = week_index(now_us)
    first = last - weeks + 1
    week = ((AUDIT.c.at_us + MONDAY_SHIFT_US) // WEEK_US).label("week")
    query = (
        select(week, AUDIT.c.old_tier, AUDIT.c.new_tier, func.count().label("n"))
        .where(
            AUDIT.c.at_us >= week_start_us(first),
            AUDIT.c.at_us <= now_us,
            AUDIT.c.old_tier.is_not(None),
            AUDIT.c.new_tier.is_not(None),
        )
        .group_by(week, AUDIT.c.old_tier, AUDIT.c.new_tier)
    )
    rows = run_in_transaction(
        engine, lambda uow: uow.repo.connection.execute(query).fetchall(), read_only=True
    )
    rank = {name: i for i, name in enumerate(policy.tier_names)}
    ups = dict.fromkeys(range(first, last + 1), 0)
    downs = dict.fromkeys(range(first, last + 1), 0)
    for index, old, new, count in rows:
        index = int(index)
        if index not in ups or old not in rank or new not in rank:
            continue
        if rank[new] > rank[old]:
            ups[index] += int(count)
        elif rank[new] < rank[old]:
            downs[index] += int(count)
    return [
        WeekMovement(micros_to_instant(week_start_us(i)).strftime("%Y-%m-%d"), ups[i], downs[i])
        for i in range(first, last + 1)
    ]
