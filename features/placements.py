"""The batch path's event aggregates from the rules engine's sorted placements, reduced in numpy.

``features.sql.behaviour_aggregates_sql`` is the definition. On ten million
placements DuckDB spends most of its time in it on a hash aggregate of some
twenty-five sums over a million customers (every sum misses the cache on every
row) and on a window sort for the gaps between orders. Here the rules engine's
replay, which sorts the placements by customer and time anyway, sorts each
placement's value and channel code along (``tier_ml.batch.PlacementsHook``), and
numpy reduces each customer's contiguous run: counts, sums, first, last and the
gaps are slices and ``reduceat`` calls. Tests prove the result equals the SQL
definition.

The runs are keyed by the engine's hash of ``customer_id``. When two ids share
one, the engine sorts by text and hands over no keys; :func:`placement_runs` then
gives None and the build uses the SQL definition instead, as it does when a sum
could overflow.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa

from features.registry import CHANNELS, WINDOWS
from features.sql import DAY, channel_code_sql
from tier_ml.batch import SortedPlacements, customer_key_sql
from tier_ml.money import MICROS_PER_DAY
from tier_ml.parts import Part, customer_parts, map_on_threads

#: What the features ask the rules engine to sort along with its placements (SQL over ``placed_orders o``).
ENGINE_COLUMNS = {
    "value_us": "o.amount_us",
    "channel_code": f"CAST({channel_code_sql('o.channel')} AS TINYINT)",
}

#: Columns of :func:`placement_runs` besides ``k`` (the customer key): the
#: ``AGGREGATE_COLUMNS`` that need placements only, plus ``spend_365_us`` (gross) from which the
#: caller subtracts what refunds and cancels removed (``features.sql.batch_removals_sql``).
PLACEMENT_COLUMNS: tuple[str, ...] = (
    "n_orders", "recency_us", "tenure_us", "gross_us", "max_value_us", "last_value_us", "last_gap_us",
    "gap_std_days", "orders_prior_90", "spend_prior_90_us", "named_other_orders",
    *(f"orders_{n}" for n in WINDOWS), *(f"spend_{n}_us" for n in WINDOWS),
    *(f"channel_{c}_orders" for c in CHANNELS), "channel_other_orders",
)


def placement_runs(placements: SortedPlacements, as_of_us: int) -> pa.Table | None:
    """Per customer key ``k``: ``PLACEMENT_COLUMNS`` from the engine's sorted placements.

    ``placements`` carries ``placed_at_us`` and ``ENGINE_COLUMNS``; every row is at or
    before ``as_of_us``. None when the engine sorted by text (no keys) or a sum could
    overflow 64-bit integers: the caller then uses the SQL definition, whose sums are 128-bit.
    """
    if placements.keys is None:
        return None
    at = placements.columns["placed_at_us"]
    value = placements.columns["value_us"]
    code = placements.columns["channel_code"]
    count = len(at)
    if not count:
        empty = {"k": pa.array([], type=pa.uint64())}
        empty.update((name, pa.array([], type=pa.float64() if name == "gap_std_days" else pa.int64()))
                     for name in PLACEMENT_COLUMNS)
        return pa.table(empty)
    if int(value.max()) > np.iinfo(np.int64).max // count:
        return None
    runs = _reduce_in_parts(placements.starts, at, value, code, int(as_of_us))
    return pa.table({"k": pa.array(placements.keys, type=pa.uint64()), **runs})


def _reduce_in_parts(
    starts: np.ndarray, at: np.ndarray, value: np.ndarray, code: np.ndarray, t: int
) -> dict[str, object]:
    """``_reduce`` over parts of whole customers side by side (``tier_ml.parts``), joined in order."""

    def reduce_part(part: Part) -> dict[str, object]:
        rows = part.rows
        return _reduce(starts[part.customers] - rows.start, at[rows], value[rows], code[rows], t)

    parts = map_on_threads(reduce_part, customer_parts(starts, len(at)))
    if len(parts) == 1:
        return parts[0]
    joined: dict[str, object] = {}
    for name, sample in parts[0].items():
        pieces = [part[name] for part in parts]
        joined[name] = (
            np.concatenate(pieces) if isinstance(sample, np.ndarray)
            else pa.concat_arrays([pa.array(piece) if isinstance(piece, np.ndarray) else piece for piece in pieces])
        )
    return joined


def _reduce(starts: np.ndarray, at: np.ndarray, value: np.ndarray, code: np.ndarray, t: int) -> dict[str, object]:
    """The per-run values of rows sorted by customer (runs begin at ``starts``) and time;
    see ``behaviour_aggregates_sql``."""
    count = len(at)
    first = np.zeros(count, dtype=bool)
    first[starts] = True
    ends = np.append(starts[1:], count)  # one past each run's last row
    lasts = ends - 1
    n = ends - starts
    cumulative = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(value, out=cumulative[1:])

    def run_sum(rows_from_end: np.ndarray) -> np.ndarray:
        """Sum of value over each run's last ``rows_from_end`` rows (rows are in time order)."""
        return cumulative[ends] - cumulative[ends - rows_from_end]

    out: dict[str, object] = {}
    out["n_orders"] = n
    out["recency_us"] = t - at[lasts]
    out["tenure_us"] = t - at[starts]
    out["gross_us"] = run_sum(n)
    out["max_value_us"] = np.maximum.reduceat(value, starts)
    out["last_value_us"] = _last_values(starts, lasts, n, at, value)
    several = n > 1
    out["last_gap_us"] = pa.array(at[lasts] - at[np.maximum(lasts - 1, 0)], type=pa.int64(), mask=~several)
    out["gap_std_days"] = _gap_std_days(at, first, starts, n)
    # Windows (t - N days, t] are a suffix of each run: count the rows inside, sum by the cumulative.
    inside = {}
    for days in WINDOWS:
        mask = at > t - days * MICROS_PER_DAY
        inside[days] = np.add.reduceat(mask, starts, dtype=np.int64)
    for days in WINDOWS:
        out[f"orders_{days}"] = inside[days]
    for days in WINDOWS:
        out[f"spend_{days}_us"] = run_sum(inside[days])
    # the 90 days before the last 90: the 180-day window less the 90-day one
    out["orders_prior_90"] = inside[180] - inside[90]
    out["spend_prior_90_us"] = run_sum(inside[180]) - run_sum(inside[90])
    slots = len(CHANNELS) + 2  # codes -1 (another channel), 0 (none), 1..k the named ones
    slot = np.repeat(np.arange(1, len(starts) * slots + 1, slots, dtype=np.int64), n)  # run * slots + 1
    np.add(slot, code, out=slot, casting="unsafe")
    per_code = np.bincount(slot, minlength=len(starts) * slots).reshape(len(starts), slots)
    del slot
    for index, channel in enumerate(CHANNELS, start=1):
        out[f"channel_{channel}_orders"] = per_code[:, index + 1]
    out["channel_other_orders"] = per_code[:, 0] + per_code[:, 1]
    out["named_other_orders"] = per_code[:, 0]
    return {name: out[name] for name in PLACEMENT_COLUMNS}


def _last_values(starts: np.ndarray, lasts: np.ndarray, n: np.ndarray, at: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Each run's last order value: the largest value at its last instant (ties are rare)."""
    last = value[lasts].copy()
    tied = np.flatnonzero((n > 1) & (at[np.maximum(lasts - 1, 0)] == at[lasts]))
    if len(tied):  # the rows of the tied runs, run by run
        sizes = n[tied]
        offsets = np.cumsum(sizes) - sizes
        rows = np.repeat(starts[tied] - offsets, sizes) + np.arange(int(sizes.sum()))
        at_last = np.repeat(at[lasts[tied]], sizes)
        candidates = np.where(at[rows] == at_last, value[rows], np.iinfo(np.int64).min)
        last[tied] = np.maximum.reduceat(candidates, offsets)
    return last


def _gap_std_days(at: np.ndarray, first: np.ndarray, starts: np.ndarray, n: np.ndarray) -> pa.Array:
    """Sample standard deviation of each run's gaps in days (two passes); missing under 3 orders."""
    gaps = np.empty(len(at), dtype=np.float64)  # row i holds the gap before it, 0 at a run's start
    gaps[0] = 0.0
    np.divide(np.diff(at), DAY, out=gaps[1:])
    gaps[first] = 0.0
    spans = np.maximum(n - 1, 1).astype(np.float64)  # the number of gaps
    mean = np.add.reduceat(gaps, starts) / spans
    np.subtract(gaps, np.repeat(mean, n), out=gaps)  # now the deviations from the run's mean
    gaps[first] = 0.0
    np.multiply(gaps, gaps, out=gaps)
    squares = np.add.reduceat(gaps, starts)
    defined = n > 2
    variance = squares / np.where(defined, spans - 1.0, 1.0)
    return pa.array(np.sqrt(variance), type=pa.float64(), mask=~defined)


def customers_match(con: duckdb.DuckDBPyConnection, placements: pa.Table, customers: str) -> bool:
    """True when ``customers`` (a relation with ``customer_id``) has as many rows as there are runs."""
    [(rows,)] = con.execute(f"SELECT count(*) FROM {customers}").fetchall()
    return int(rows) == placements.num_rows


def placement_join_sql(placements: str, customers: str, removals: str) -> str:
    """``AGGREGATE_COLUMNS`` per customer: the numpy runs joined to ``customers`` by key, plus removals.

    ``removals`` has the columns of ``features.sql.batch_removals_sql``. Sums are made
    128-bit like the SQL definition's, so the features' products cannot overflow.
    """
    key = customer_key_sql("c.customer_id")
    big = ("gross_us", "spend_prior_90_us", *(f"spend_{n}_us" for n in WINDOWS))
    columns = [
        f"CAST(p.{name} AS HUGEINT) AS {name}" if name in big else f"p.{name}"
        for name in PLACEMENT_COLUMNS
    ]
    return f"""
    SELECT c.customer_id, {", ".join(columns)},
           CAST(coalesce(r.removed_us, 0) AS HUGEINT) AS removed_us,
           CAST(p.spend_365_us AS HUGEINT) - coalesce(r.removed_365_us, 0) AS net_365_us,
           coalesce(r.refunded_orders, 0) AS refunded_orders,
           coalesce(r.cancelled_orders, 0) AS cancelled_orders
    FROM {customers} c
    JOIN {placements} p ON p.k = {key}
    LEFT JOIN {removals} r ON r.customer_id = c.customer_id
    """
