"""The ``replay`` stage: every customer's tier replayed by the numpy kernel.

The timeline of a customer is their placements (sorted, see
``tier_ml.batch.placements``), the maturities and window exits they schedule, and
late refunds; ``tier_ml.replay_kernel`` replays it in parts of whole customers on
threads. Leaves table ``customer_state``: one row per customer, in micro-units and
epoch microseconds.
"""

from __future__ import annotations

from collections.abc import Callable

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tier_ml.arrow_numpy import arrow_table, to_arrow, to_numpy
from tier_ml.batch.placements import (
    Placements,
    PlacementsHook,
    SortedPlacements,
    customer_key_sql,
    ladder_regions,
    sorted_placements,
)
from tier_ml.parts import Part, customer_parts, map_on_threads, run_starts
from tier_ml.policy import Policy
from tier_ml.replay_kernel import (
    KernelResult,
    eligible_tiers,
    replay_customers,
    replay_steady_customers,
)


def _late_steps(con: duckdb.DuckDBPyConnection, placements: Placements) -> dict[str, np.ndarray]:
    """Late refunds and cancels that lower counted spend, by customer key and instant."""
    key = "customer_id" if placements.keys is None else customer_key_sql("customer_id")
    table = con.sql(
        f"SELECT {key} AS customer, at_us, spend_us, orders FROM late_steps ORDER BY customer, at_us"
    ).to_arrow_table()
    if placements.keys is None:
        found = pc.index_in(table.column("customer"), value_set=placements.customer_ids)
        ckey = np.asarray(to_numpy(found), dtype=np.int64)
    else:
        ckey = np.searchsorted(placements.keys, to_numpy(table.column("customer"))).astype(np.int64)
    return {
        "ckey": ckey,
        "at_us": to_numpy(table.column("at_us")),
        "spend_us": to_numpy(table.column("spend_us")),
        "orders": to_numpy(table.column("orders")),
    }


def _outlook(policy: Policy, as_of_us: int, orders: dict[str, np.ndarray], starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per customer: pending spend (orders not matured at ``as_of``) and the next scheduled step."""
    placed_at = orders["placed_at_us"]
    matures = placed_at + policy.buffer_us
    pending = matures > as_of_us
    pending_us = np.add.reduceat(np.where(pending, orders["net_us"], 0), starts) if len(starts) else np.zeros(0, np.int64)
    never = np.iinfo(np.int64).max
    step = np.where(pending & (orders["counted_us"] > 0), matures, never)
    if policy.window_us is not None:
        leaves = placed_at + policy.window_us
        np.minimum(step, np.where((leaves > as_of_us) & (orders["at_exit"] > 0), leaves, never), out=step)
    next_step = np.minimum.reduceat(step, starts) if len(starts) else np.zeros(0, np.int64)
    return pending_us, next_step


def _outlook_in_parts(
    policy: Policy, as_of_us: int, orders: dict[str, np.ndarray], starts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``_outlook`` over parts of whole customers (``tier_ml.parts``), joined in order."""

    def part_outlook(part: Part) -> tuple[np.ndarray, np.ndarray]:
        return _outlook(policy, as_of_us, _slice(orders, part.rows), starts[part.customers] - part.rows.start)

    outlooks = map_on_threads(part_outlook, customer_parts(starts, len(orders["ckey"])))
    if not outlooks:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate([p for p, _ in outlooks]), np.concatenate([n for _, n in outlooks])


def _timeline(
    policy: Policy, as_of_us: int, orders: dict[str, np.ndarray], late: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Kernel rows: placements, maturities, late refunds and window exits, sorted per customer.

    Every part comes sorted by (customer, instant), so the stable sort below only
    merges sorted runs; placements stay first (in their order) among rows of an instant.
    """
    ckey, placed_at, rkey = orders["ckey"], orders["placed_at_us"], orders["rkey"]
    counted, at_exit = orders["counted_us"], orders["at_exit"]
    count = len(ckey)
    parts = [(ckey, placed_at, np.zeros(count, np.int64), np.zeros(count, np.int32), np.ones(count, bool), rkey)]
    matures = placed_at + policy.buffer_us
    mask = (counted > 0) & (matures <= as_of_us)
    parts.append(_steps(ckey[mask], matures[mask], counted[mask], 1))
    if policy.window_us is not None:
        leaves = placed_at + policy.window_us
        mask = (at_exit > 0) & (leaves <= as_of_us)
        parts.append(_steps(ckey[mask], leaves[mask], -at_exit[mask], -1))
    count = len(late["ckey"])
    parts.append((late["ckey"], late["at_us"], late["spend_us"], late["orders"],
                  np.zeros(count, bool), np.zeros(count, np.int32)))
    names = ("ckey", "at_us", "spend_us", "orders", "placed", "rkey")
    rows = {name: np.concatenate([part[i] for part in parts]) for i, name in enumerate(names)}
    order = _customer_time_order(rows["ckey"], rows["at_us"])
    return {name: values[order] for name, values in rows.items()}


def _steps(ckey: np.ndarray, at: np.ndarray, spend: np.ndarray, orders: int) -> tuple[np.ndarray, ...]:
    n = len(ckey)
    return (ckey, at, spend, np.full(n, orders, np.int32), np.zeros(n, bool), np.zeros(n, np.int32))


def _customer_time_order(ckey: np.ndarray, at_us: np.ndarray) -> np.ndarray:
    """The stable permutation sorting rows by (customer, instant).

    One 64-bit key ``customer * span + time`` sorts fastest; the time unit is the
    coarsest that loses nothing (microseconds, milliseconds or seconds). When no
    unit fits in 63 bits, fall back to a two-key sort.
    """
    if len(ckey) == 0:
        return np.zeros(0, dtype=np.int64)
    origin = int(at_us.min())
    offset = at_us - origin
    first = int(ckey.min())
    customers = int(ckey.max()) - first + 1
    for unit in (1, 1_000, 1_000_000):
        if unit > 1 and np.any(offset % unit):
            break
        span = int(offset.max()) // unit + 1
        if customers * span < 2**62:
            key = (ckey.astype(np.int64) - first) * span
            key += offset // unit if unit > 1 else offset
            return np.argsort(key, kind="stable")
    return np.lexsort((at_us, ckey))


def _slice(columns: dict[str, np.ndarray], rows: slice) -> dict[str, np.ndarray]:
    return {name: values[rows] for name, values in columns.items()}


def _run_kernel(
    policy: Policy, as_of_us: int, orders: dict[str, np.ndarray], late: dict[str, np.ndarray], starts: np.ndarray
) -> dict[str, np.ndarray]:
    """The replay of every customer: one value per customer key (0, 1, ...) for each state field.

    Customers whose eligible tier can never fall (see ``_steady_customers``) take the
    short path of the kernel; the others replay their full timeline. The work is cut into
    parts of whole customers that run side by side (``tier_ml.parts``).
    """
    ladders = [policy.thresholds_us(None), *(policy.thresholds_us(r) for r in ladder_regions(policy))]
    thresholds = np.array(ladders, dtype=np.int64)
    min_orders = np.array(policy.min_orders_list, dtype=np.int64)
    steady = _steady_customers(policy, orders, late, starts, thresholds, min_orders)
    on_rows = np.repeat(steady, np.diff(np.append(starts, len(orders["ckey"]))))
    tasks: list[Callable[[], KernelResult]] = []
    if steady.any():
        # Every customer takes the short path (cheaper than picking the steady ones out of
        # ten million rows); the others' results are overwritten by their full replay below.
        for each in customer_parts(starts, len(orders["ckey"])):
            part = _slice(orders, each.rows)
            tasks.append(lambda part=part: replay_steady_customers(
                part["ckey"], part["placed_at_us"], part["counted_us"], part["rkey"],
                buffer_us=policy.buffer_us, thresholds=thresholds, min_orders=min_orders, as_of_us=as_of_us,
            ))
    rest = orders if not steady.any() else {name: values[~on_rows] for name, values in orders.items()}
    for each in customer_parts(run_starts(rest["ckey"]), len(rest["ckey"])):
        part = _slice(rest, each.rows)
        tasks.append(lambda part=part: _replay_part(policy, as_of_us, part, late, thresholds, min_orders))
    parts = map_on_threads(lambda task: task(), tasks)  # in order: full replays overwrite short ones
    state = {name: np.zeros(len(starts), dtype=np.int64) for name in KernelResult.__dataclass_fields__}
    for part in parts:
        for name, values in state.items():
            values[part.customer] = getattr(part, name)
    return state


def _replay_part(
    policy: Policy,
    as_of_us: int,
    part: dict[str, np.ndarray],
    late: dict[str, np.ndarray],
    thresholds: np.ndarray,
    min_orders: np.ndarray,
) -> KernelResult:
    """The full timeline replay of one part of whole customers (with their late steps)."""
    first, last = int(part["ckey"][0]), int(part["ckey"][-1])
    late_start, late_stop = np.searchsorted(late["ckey"], [first, last + 1], side="left")
    rows = _timeline(policy, as_of_us, part, _slice(late, slice(int(late_start), int(late_stop))))
    return replay_customers(
        rows["ckey"], rows["at_us"], rows["spend_us"], rows["orders"], rows["placed"], rows["rkey"],
        thresholds=thresholds, min_orders=min_orders, grace_us=policy.grace_us, as_of_us=as_of_us,
    )


def _steady_customers(
    policy: Policy,
    orders: dict[str, np.ndarray],
    late: dict[str, np.ndarray],
    starts: np.ndarray,
    thresholds: np.ndarray,
    min_orders: np.ndarray,
) -> np.ndarray:
    """Per customer: can their eligible tier never fall? (Then their tier is simply it.)

    It can fall only through a late refund step, a window exit, or a move to a
    region with higher thresholds; and the short path assumes nothing is eligible
    for more than the default tier before anything is spent.
    """
    steady = np.ones(len(starts), dtype=bool)
    nothing_spent = eligible_tiers(
        np.zeros(len(thresholds), np.int64), np.zeros(len(thresholds), np.int64),
        np.arange(len(thresholds)), thresholds, min_orders,
    )
    if policy.window_us is not None or np.any(nothing_spent):
        steady[:] = False
        return steady
    steady[late["ckey"]] = False
    if len(thresholds) > 1:
        ckey, rkey = orders["ckey"], orders["rkey"]
        moved = (ckey[1:] == ckey[:-1]) & (rkey[1:] != rkey[:-1])
        steady[ckey[1:][moved]] = False
    return steady


def replay_stage(
    con: duckdb.DuckDBPyConnection, policy: Policy, as_of_us: int, hook: PlacementsHook | None = None
) -> None:
    """Replay every customer with the numpy kernel and store table ``customer_state``.

    ``hook``, when given, receives the sorted placements with its own columns before the
    kernel runs (see ``PlacementsHook``).
    """
    placements = sorted_placements(con, policy, hook.columns if hook is not None else None)
    if hook is not None:
        shared = {"placed_at_us": placements.columns["placed_at_us"], **placements.extras}
        hook.receive(SortedPlacements(shared, placements.starts, placements.keys))
        del shared
        placements.extras.clear()
    late = _late_steps(con, placements)
    for table in ("checked", "adjustments", "adjustment_steps", "late_steps"):
        con.execute(f"DROP TABLE IF EXISTS {table}")  # free memory before the kernel
    orders = placements.columns
    state = _run_kernel(policy, as_of_us, orders, late, placements.starts)
    pending_us, next_step = _outlook_in_parts(policy, as_of_us, orders, placements.starts)
    del orders, late
    protected = state["tier"] > state["eligible"]
    grace_end = state["last_placed_us"] + policy.grace_us
    scheduled = next_step != np.iinfo(np.int64).max
    next_change = np.where(protected, np.minimum(grace_end, np.where(scheduled, next_step, grace_end)), next_step)
    columns = {
        "customer_id": placements.customer_ids,
        "tier": state["tier"],
        "eligible": state["eligible"],
        "qualifying_us": state["qualifying_us"],
        "qualifying_orders": state["qualifying_orders"],
        "region": placements.regions,
        "last_placed_us": state["last_placed_us"],
        "tier_since_us": state["tier_since_us"],
        "tier_changes": state["tier_changes"],
        "pending_us": pending_us,
        "grace_ends_at_us": to_arrow(grace_end, pa.int64(), mask=~protected),
        "next_change_at_us": to_arrow(next_change, pa.int64(), mask=~(protected | scheduled)),
    }
    kernel_state = arrow_table(columns)
    con.register("kernel_state", kernel_state)
    try:
        con.execute("CREATE OR REPLACE TEMP TABLE customer_state AS SELECT * FROM kernel_state")
    finally:
        con.unregister("kernel_state")
