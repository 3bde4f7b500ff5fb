"""Every valid placement sorted by customer and time, as numpy columns for the replay.

DuckDB sorts the placements by a 64-bit hash of ``customer_id`` (exact: a second
hash detects a shared one, and the sort falls back to the text); numpy then applies
what refunds and cancels removed and numbers the customers 0, 1, ... in sort order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tier_ml.arrow_numpy import arrow_table, to_arrow, to_numpy
from tier_ml.batch.source import sql_literal
from tier_ml.parts import map_on_threads, row_parts
from tier_ml.policy import Policy


def ladder_regions(policy: Policy) -> list[str]:
    """Regions with their own thresholds; ladder code ``i + 1`` is region ``i``, 0 the default."""
    return [region for region in policy.regions if region]


def _placements_sql(policy: Policy, key: str, extra: str, tie: str) -> str:
    """Every valid placement with its row and value, sorted by customer ``key``, instant and ``tie``.

    What refunds and cancels removed is applied afterwards (``_spend_columns``): a join to
    ``order_adjustments`` here would make every placement probe it by ``order_id`` text.
    """
    ladder = " ".join(f"WHEN {sql_literal(r)} THEN {i}" for i, r in enumerate(ladder_regions(policy), start=1))
    rkey = f", CAST(CASE o.region {ladder} ELSE 0 END AS INTEGER) AS rkey" if ladder else ""
    return f"""
    SELECT {key} AS customer, o.at_us AS placed_at_us, o.row, o.amount_us{rkey}{extra}
    FROM placed_orders o
    ORDER BY customer, o.at_us{tie}
    """


def _spend_columns(
    con: duckdb.DuckDBPyConnection, policy: Policy, amount: np.ndarray, rows: np.ndarray
) -> dict[str, np.ndarray]:
    """Per placement (``amount`` and ``rows`` in the placements' order): what it counts.

    ``counted_us`` at maturity and ``net_us`` at ``as_of`` are its value less what its
    refunds and cancels had removed by then; with a window, ``at_exit`` is what leaves
    the window with it (``removed_before_exit`` under ``deduct``). Adjusted orders
    (``order_adjustments``, one per order, about a tenth) are found by their placement's
    row. The rows are filled in parts on threads (``tier_ml.parts``): the lookups are
    scattered reads of a ten-million-row index, and one thread would leave a core idle.
    """
    buffer, window = policy.buffer_us, policy.window_us
    counts = window is None or window > buffer
    exit_name = "removed_before_exit" if policy.late_refunds == "deduct" else "removed_at_maturity"
    adjusted = con.sql(
        "SELECT placed_row, removed_at_maturity, removed_at_as_of, removed_before_exit FROM order_adjustments"
    ).to_arrow_table()
    removed = {name: to_numpy(adjusted.column(name)) for name in adjusted.column_names[1:]}
    small = np.int32 if adjusted.num_rows < 2**31 else np.int64  # half the memory to touch
    index = np.full(int(rows.max()) + 1 if len(rows) else 0, -1, dtype=small)
    index[to_numpy(adjusted.column("placed_row"))] = np.arange(adjusted.num_rows, dtype=small)
    columns = {"counted_us": np.empty_like(amount), "net_us": np.empty_like(amount)}
    if window is not None:
        columns["at_exit"] = np.empty_like(amount)

    def fill(part: slice) -> None:
        found = index[rows[part]]
        at = np.flatnonzero(found >= 0)
        which = found[at]
        value = amount[part]
        net = columns["net_us"][part]
        net[:] = value
        net[at] -= removed["removed_at_as_of"][which]
        counted = columns["counted_us"][part]
        counted[:] = value if counts else 0
        if counts:
            counted[at] -= removed["removed_at_maturity"][which]
        if window is not None:
            at_exit = columns["at_exit"][part]
            at_exit[:] = value if counts else 0
            if counts:
                adjusted_value = value[at]
                at_exit[at] = np.where(
                    adjusted_value > removed["removed_at_maturity"][which],
                    adjusted_value - removed[exit_name][which],
                    0,
                )

    map_on_threads(fill, row_parts(len(rows)))
    return columns


#: How customers are keyed for the sort of placements (a 64-bit hash of the id; see
#: ``sorted_placements``). Tests set a constant to exercise the fallback for collisions.
CUSTOMER_HASH = "hash({column})"


def customer_key_sql(column: str) -> str:
    """SQL for the key by which placements are sorted (``CUSTOMER_HASH`` of ``column``)."""
    return CUSTOMER_HASH.format(column=column)

#: Numeric columns of the sorted placements, as the kernel reads them.
_PLACEMENT_COLUMNS = ("placed_at_us", "rkey", "counted_us", "net_us", "at_exit")


@dataclass
class Placements:
    """The sorted placements as numpy columns, and per customer their id and region (Arrow)."""

    columns: dict[str, np.ndarray]  # ckey (0, 1, ... per customer), then _PLACEMENT_COLUMNS
    starts: np.ndarray  # first row of each customer
    customer_ids: pa.Array | pa.ChunkedArray
    regions: pa.Array | pa.ChunkedArray  # the region of each customer's latest placement
    keys: np.ndarray | None  # the customers' 64-bit keys (sorted), None when keyed by text
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # a PlacementsHook's columns


@dataclass(frozen=True)
class SortedPlacements:
    """What a ``PlacementsHook`` receives: every valid placement at or before ``as_of``, sorted.

    Rows are sorted by customer (by ``keys``), then time; placements at one instant are in
    ``event_id`` order. ``columns`` holds ``placed_at_us`` and the hook's columns;
    ``starts`` the first row of each customer; ``keys`` each customer's
    ``CUSTOMER_HASH`` of ``customer_id``, or None when two ids shared one and the rows
    were sorted by the ids' text instead.
    """

    columns: dict[str, np.ndarray]
    starts: np.ndarray
    keys: np.ndarray | None


@dataclass(frozen=True)
class PlacementsHook:
    """Lets another stage share the replay's sort of the placements (``run_pipeline``).

    ``columns`` are extra per-placement values, as SQL over ``placed_orders o`` by name;
    they are sorted along with the replay's own, and ``receive`` gets them before the
    kernel runs (they are dropped afterwards).
    """

    columns: dict[str, str]
    receive: Callable[[SortedPlacements], None]


def _numpy_columns(table: pa.Table, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The columns ``names`` of ``table`` that it has, as numpy arrays, converted side by side.

    Joining DuckDB's chunks of a column into one array is mostly first writes to fresh
    memory (page faults), which threads take in parallel.
    """
    wanted = [name for name in names if name in table.column_names]
    return dict(zip(wanted, map_on_threads(lambda name: to_numpy(table.column(name)), wanted), strict=True))


def _placement_columns(
    arrays: dict[str, np.ndarray], first: np.ndarray, spare: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """The kernel's columns: ``ckey`` from the customers' first rows, then ``_PLACEMENT_COLUMNS``.

    ``ckey`` is written into ``spare`` (a 64-bit array of the same length no longer
    needed) when given: memory already touched costs no page faults, while a fresh
    ten-million-row array costs 0.3 s of them on this machine.
    """
    ckey = np.cumsum(first, dtype=np.int64, out=None if spare is None else spare.view(np.int64))
    ckey -= 1  # in place, for the same reason
    columns = {"ckey": ckey}
    columns.update((name, arrays[name]) for name in _PLACEMENT_COLUMNS if name in arrays)
    if "at_exit" not in columns:  # no window
        columns["at_exit"] = np.zeros(len(first), dtype=np.int64)
    if "rkey" not in columns:  # no regional thresholds: one ladder
        columns["rkey"] = np.zeros(len(first), dtype=np.int32)
    return columns


def sorted_placements(
    con: duckdb.DuckDBPyConnection, policy: Policy, extras: dict[str, str] | None = None
) -> Placements:
    """Placements sorted by customer, with customer keys 0, 1, ... in that order.

    DuckDB sorts by a 64-bit hash of ``customer_id`` (sorting ten million rows by
    text, with text payload, costs several times more). A second, independent hash
    must be constant within every customer: if two customers ever share the first
    hash, the placements are sorted by the text instead. Placements at one instant
    are put in ``event_id`` order afterwards (ties are rare), and each customer's id
    and region are read for their last placement only. ``extras`` (name: SQL over
    ``placed_orders o``) are sorted along and returned in ``Placements.extras``.
    """
    wanted = extras or {}
    more = "".join(f", {sql} AS {name}" for name, sql in wanted.items())
    key_sql = customer_key_sql("o.customer_id")
    table = con.sql(_placements_sql(policy, key_sql, f", hash(o.customer_id || '|') AS check_key{more}", "")
                    ).to_arrow_table()
    arrays = _numpy_columns(table, ("customer", "check_key", "row", "amount_us", *_PLACEMENT_COLUMNS, *wanted))
    del table
    key, check, rows = arrays.pop("customer"), arrays.pop("check_key"), arrays.pop("row")
    count = len(key)
    first = np.ones(count, dtype=bool)
    first[1:] = key[1:] != key[:-1]
    if np.any(~first[1:] & (check[1:] != check[:-1])):  # a collision of the first hash
        del arrays, key, check, rows
        return _sorted_placements_by_text(con, policy, wanted)
    arrays.update(_spend_columns(con, policy, arrays.pop("amount_us"), rows))
    columns = _placement_columns(arrays, first, spare=check if check.flags.writeable else None)
    columns.update((name, arrays[name]) for name in wanted)  # reordered with the rest at ties
    del arrays, check
    tied = ~first[1:] & (columns["placed_at_us"][1:] == columns["placed_at_us"][:-1])
    if tied.any():
        rows = _order_ties_by_event_id(con, columns, rows, tied)
    starts = np.flatnonzero(first)
    lasts = np.append(starts[1:], count)[: len(starts)] - 1
    named = _lookup_rows(con, rows[lasts], "customer_id, region")
    extra_columns = {name: columns.pop(name) for name in wanted}
    return Placements(
        columns, starts, named.column("customer_id"), named.column("region"), key[starts], extra_columns
    )


def _lookup_rows(con: duckdb.DuckDBPyConnection, rows: np.ndarray, fields: str) -> pa.Table:
    """``fields`` of the placements at ``rows``, in the order of ``rows``."""
    con.register("wanted_rows", arrow_table({"row": rows, "position": np.arange(len(rows))}))
    try:
        return con.sql(
            f"SELECT {fields} FROM wanted_rows w JOIN placed_orders p USING (row) ORDER BY w.position"
        ).to_arrow_table().combine_chunks()
    finally:
        con.unregister("wanted_rows")


def _order_ties_by_event_id(
    con: duckdb.DuckDBPyConnection, columns: dict[str, np.ndarray], rows: np.ndarray, tied: np.ndarray
) -> np.ndarray:
    """Within each run of placements of one customer at one instant, sort by ``event_id``.

    Only the region of a run's last placement matters to the rules (the others only
    add spend at the same instant), so this puts the largest ``event_id`` last.
    Returns ``rows`` in the new order (``columns`` are reordered in place).
    """
    member = np.zeros(len(rows), dtype=bool)
    member[1:] |= tied
    member[:-1] |= tied
    slots = np.flatnonzero(member)
    continues = np.zeros(len(slots), dtype=bool)  # the slot is tied to the row before it
    continues[slots > 0] = tied[slots[slots > 0] - 1]
    group = np.cumsum(~continues)  # one number per run
    runs = arrow_table({"group": group, "event_id": _lookup_rows(con, rows[slots], "event_id").column(0)})
    moved = slots[to_numpy(pc.sort_indices(runs, sort_keys=[("group", "ascending"), ("event_id", "ascending")]))]
    for name, values in [*columns.items(), ("row", rows)]:
        values = values if values.flags.writeable else values.copy()
        values[slots] = values[moved]
        columns[name] = values
    return columns.pop("row")


def _sorted_placements_by_text(
    con: duckdb.DuckDBPyConnection, policy: Policy, extras: dict[str, str]
) -> Placements:
    """Placements sorted by ``customer_id`` text, ties by ``event_id``: exact whatever the ids."""
    more = "".join(f", {sql} AS {name}" for name, sql in extras.items())
    sql = _placements_sql(policy, "o.customer_id", f", o.region{more}", ", o.event_id")
    table = con.sql(sql).to_arrow_table()
    ids = table.column("customer").combine_chunks()
    count = len(ids)
    first = np.ones(count, dtype=bool)
    if count > 1:
        first[1:] = to_numpy(pc.not_equal(ids.slice(1), ids.slice(0, count - 1)))
    starts = np.flatnonzero(first)
    lasts = np.append(starts[1:], count)[: len(starts)] - 1
    regions = table.column("region").combine_chunks().take(to_arrow(lasts, pa.int64()))
    arrays = _numpy_columns(table, ("row", "amount_us", *_PLACEMENT_COLUMNS))
    arrays.update(_spend_columns(con, policy, arrays.pop("amount_us"), arrays.pop("row")))
    columns = _placement_columns(arrays, first)
    extra_columns = _numpy_columns(table, tuple(extras))
    return Placements(columns, starts, ids.take(to_arrow(starts, pa.int64())), regions, None, extra_columns)
