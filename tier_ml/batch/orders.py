"""The ``orders`` stage: per order, what its refunds and cancels remove, and when."""

from __future__ import annotations

from tier_ml.batch.validation import CANCELLED
from tier_ml.policy import Policy


def orders_sql(policy: Policy, as_of_us: int) -> list[str]:
    """Per order: what its refunds and cancels remove (definition 1 of ``tier_ml.rules``).

    Leaves ``order_adjustments`` (one row per adjusted order, keyed by its placement's
    ``placed_row``) and ``late_steps`` (late refunds and cancels that lower counted
    spend); the replay applies the first to the placements (``tier_ml.batch.placements``) and
    merges the second into each customer's timeline.
    """
    buffer, window = policy.buffer_us, policy.window_us
    deduct = policy.late_refunds == "deduct"
    counts = "TRUE" if window is None else f"{window} > {buffer}"
    before_exit = "TRUE" if window is None else f"at_us < placed_at_us + {window}"
    late = "FALSE" if not deduct else (
        f"s.at_us >= s.placed_at_us + {buffer} AND s.removed > s.removed_before"
        + ("" if window is None else f" AND s.at_us < s.placed_at_us + {window}")
    )
    return [
        f"""
        CREATE OR REPLACE TEMP TABLE adjustment_steps AS
        -- removed_before is what the step before removed: the running sum less this step
        -- (0 for an order's first step), so one window pass gives both
        SELECT order_id, placed_row, customer_id, event_id, at_us, value_us, placed_at_us,
               least(value_us, running) AS removed, least(value_us, running - step) AS removed_before
        FROM (
            SELECT *, sum(step) OVER (PARTITION BY order_id ORDER BY at_us, event_id
                                      ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS running
            FROM (
                SELECT order_id, placed_row, customer_id, event_id, at_us, value_us, placed_at_us,
                       CASE WHEN event_type = {CANCELLED} THEN value_us ELSE amount_us END AS step
                FROM adjustments WHERE reason IS NULL
            )
        )
        """,
        f"""
        CREATE OR REPLACE TEMP TABLE order_adjustments AS
        SELECT placed_row,  -- the order's placement: an integer key groups faster than order_id text
               CAST(coalesce(max(removed) FILTER (WHERE at_us < placed_at_us + {buffer}), 0) AS BIGINT)
                   AS removed_at_maturity,
               CAST(max(removed) AS BIGINT) AS removed_at_as_of,
               CAST(coalesce(max(removed) FILTER (WHERE {before_exit}), 0) AS BIGINT) AS removed_before_exit
        FROM adjustment_steps GROUP BY placed_row
        """,
        f"""
        CREATE OR REPLACE TEMP TABLE late_steps AS
        SELECT s.customer_id, s.at_us, CAST(s.removed_before - s.removed AS BIGINT) AS spend_us,
               CAST(CASE WHEN s.removed = s.value_us THEN -1 ELSE 0 END AS INTEGER) AS orders
        FROM adjustment_steps s
        JOIN order_adjustments a USING (placed_row)
        WHERE {counts} AND s.value_us > a.removed_at_maturity AND {late}
        """,
    ]
