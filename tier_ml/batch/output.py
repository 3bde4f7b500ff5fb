"""The ``output`` stage: view ``tiers_out``, the file's columns from ``customer_state``; and the
tiers file's types, shared by every path that writes one."""

from __future__ import annotations

from tier_ml.batch.source import sql_literal
from tier_ml.policy import Policy

#: The tiers file's columns and types on every path that writes one (``classify`` on each
#: engine, ``tiers export``): money as DECIMAL(18, 2), instants as ISO 8601 text.
TIERS_FILE_TYPES = {
    "customer_id": "VARCHAR",
    "tier": "VARCHAR",
    "qualifying_spend": "DECIMAL(18, 2)",
    "pending_spend": "DECIMAL(18, 2)",
    "eligible_tier": "VARCHAR",
    "tier_since": "VARCHAR",
    "qualifying_orders": "BIGINT",
    "next_tier": "VARCHAR",
    "spend_to_next_tier": "DECIMAL(18, 2)",
    "region": "VARCHAR",
    "last_order_at": "VARCHAR",
    "grace_ends_at": "VARCHAR",
    "next_change_at": "VARCHAR",
    "tier_changes": "BIGINT",
}


def typed_tiers_sql(relation: str) -> str:
    """SELECT the tiers file's columns from ``relation`` cast to ``TIERS_FILE_TYPES``."""
    columns = ", ".join(f"CAST({name} AS {kind}) AS {name}" for name, kind in TIERS_FILE_TYPES.items())
    return f"SELECT {columns} FROM {relation}"


def _threshold_case(policy: Policy, tier_expr: str, region_expr: str) -> str:
    """SQL for the spend threshold (micro-units) of tier index ``tier_expr`` in a region."""

    def ladder(region: str | None) -> str:
        thresholds = policy.thresholds_us(region)
        whens = " ".join(f"WHEN {i} THEN {t}" for i, t in enumerate(thresholds))
        return f"CASE {tier_expr} {whens} END"

    if not policy.regions:
        return ladder(None)
    regional = " ".join(f"WHEN {sql_literal(r)} THEN {ladder(r)}" for r in policy.regions)
    return f"CASE {region_expr} {regional} ELSE {ladder(None)} END"


def output_sql(policy: Policy) -> str:
    names = "[" + ", ".join(sql_literal(n) for n in policy.tier_names) + "]"
    top = len(policy.tiers) - 1
    next_threshold = _threshold_case(policy, "tier + 1", "region")

    def money(expr: str) -> str:
        return f"CAST(CAST(({expr} + 5000) // 10000 AS DECIMAL(18, 0)) / 100 AS DECIMAL(18, 2))"

    def instant(expr: str) -> str:
        return (
            f"CASE WHEN {expr} % 1000000 = 0 THEN strftime(make_timestamp({expr}), '%Y-%m-%dT%H:%M:%SZ') "
            f"ELSE strftime(make_timestamp({expr}), '%Y-%m-%dT%H:%M:%S.%fZ') END"
        )

    # A view: the file writer and the summary read it once each, so storing it would only add a copy.
    return f"""
    CREATE OR REPLACE TEMP VIEW tiers_out AS
    SELECT customer_id,
           {names}[tier + 1] AS tier,
           {money('qualifying_us')} AS qualifying_spend,
           {money('pending_us')} AS pending_spend,
           {names}[eligible + 1] AS eligible_tier,
           {instant('tier_since_us')} AS tier_since,
           qualifying_orders,
           CASE WHEN tier < {top} THEN {names}[tier + 2] END AS next_tier,
           CASE WHEN tier < {top} THEN {money(f'greatest(0, {next_threshold} - qualifying_us)')} END
               AS spend_to_next_tier,
           region,
           {instant('last_placed_us')} AS last_order_at,
           {instant('grace_ends_at_us')} AS grace_ends_at,
           {instant('next_change_at_us')} AS next_change_at,
           tier_changes
    FROM customer_state
    """
