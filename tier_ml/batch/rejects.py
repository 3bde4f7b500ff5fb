"""The ``rejects`` stage: every rejected row with its reason, detail and fields as read."""

from __future__ import annotations

from tier_ml.batch.source import REBUILT_TIMES, source_columns
from tier_ml.batch.validation import CANCELLED, PLACED, REFUNDED, stateless_detail_sql
from tier_ml.events import BEYOND_HEADER, EVENT_FIELDS
from tier_ml.policy import Policy


def _kept_fields_sql(types: dict[str, str]) -> str:
    """The select list of ``src`` (fields as read, plus the parsed values the reject details
    use), rebuilt from the columns of ``checked`` for a typed source (``keeps_raw_fields``)."""
    names = {CANCELLED: "cancelled", PLACED: "placed", REFUNDED: "refunded"}
    kind_name = "CASE event_type " + " ".join(f"WHEN {c} THEN '{n}'" for c, n in names.items()) + " END"
    amount = "CAST(amount_raw AS DOUBLE)"
    return (
        f"row, event_id, coalesce(event_type_text, {kind_name}) AS event_type, order_id, customer_id, "
        f"{REBUILT_TIMES[types['occurred_at']].format(at='at_us')} AS occurred_at, "
        "CAST(amount_raw AS VARCHAR) AS amount, currency, channel, nullif(region, '') AS region, "
        "at_us IS NULL AS occurred_at_missing, at_us, amount_raw IS NULL AS amount_missing, "
        f"CASE WHEN isfinite({amount}) THEN {amount} END AS amount_num, "
        f"CAST(NULL AS VARCHAR) AS {BEYOND_HEADER}"  # a typed source is never CSV
    )


def rejects_sql(policy: Policy, types: dict[str, str], kept_raw: bool) -> list[str]:
    """Every rejected row with its reason, detail and fields as read.

    The fields are computed for the rejected rows only, not for the whole input: from
    ``checked`` when validation kept them (``kept_raw``, a typed source whose column types
    are ``types``, see ``tier_ml.batch.source.keeps_raw_fields``), else picked from the
    source by reading it again.
    """
    raw_fields = ", ".join(f"s.{n}" for n in EVENT_FIELDS)
    picked = (
        f"SELECT {_kept_fields_sql(types)} FROM checked"
        if kept_raw else f"SELECT {source_columns(types)} FROM src_raw"
    )
    return [f"""
    CREATE OR REPLACE TEMP TABLE reject_reasons AS
        SELECT row, reason, NULL AS detail FROM checked WHERE reason IS NOT NULL
        UNION ALL
        SELECT row, 'conflicting_replay', 'event_id ' || event_id || ' was already used for different content'
        FROM copies WHERE NOT same_content
        UNION ALL
        SELECT row, 'duplicate_order', 'order ' || order_id || ' was already placed by event ' || first_event_id
        FROM placed_repeats WHERE nth > 1
        UNION ALL
        SELECT row, reason,
               CASE reason
                 WHEN 'unknown_order'
                   THEN CASE event_type WHEN {REFUNDED} THEN 'refunded' ELSE 'cancelled' END
                        || ' event for order ' || order_id || ', not placed at or before it'
                 ELSE 'order ' || order_id || ' belongs to customer ' || order_customer
                      || ', not ' || customer_id
               END
        FROM adjustments WHERE reason IS NOT NULL
    """, f"""
    CREATE OR REPLACE TEMP TABLE rejects AS
    WITH picked AS ({picked} WHERE row IN (SELECT row FROM reject_reasons))
    SELECT f.row, f.reason, coalesce(f.detail, {stateless_detail_sql(policy)}) AS detail, {raw_fields}
    FROM reject_reasons f JOIN picked s ON s.row = f.row
    ORDER BY f.row, f.reason
    """, "DROP TABLE reject_reasons"]
