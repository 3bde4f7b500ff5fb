"""The ``validate`` stage: the per-row checks of ``tier_ml.events.check_row`` in one query.

Leaves table ``checked``: every input row with its reject reason (NULL when valid),
its amount in base-currency micro-units and the hashes the ledger searches by.
"""

from __future__ import annotations

from tier_ml.batch.source import sql_literal
from tier_ml.events import BEYOND_HEADER, malformed_detail, too_large
from tier_ml.money import MAX_AMOUNT
from tier_ml.policy import Policy


def _double(value: float) -> str:
    return f"CAST({float(value)!r} AS DOUBLE)"


# Event types as small integers, ordered like their names (cancelled < placed < refunded),
# so ordering by the code orders like tier_ml.events orders by the name.
CANCELLED, PLACED, REFUNDED = 0, 1, 2
_KINDS = f"WHEN 'placed' THEN {PLACED} WHEN 'refunded' THEN {REFUNDED} WHEN 'cancelled' THEN {CANCELLED}"
_KIND_CODE = f"CASE event_type {_KINDS} ELSE CASE lower(event_type) {_KINDS} END END"


def _rate_sql(policy: Policy, column: str) -> str:
    """The fx rate of ``column`` (exact code first, then upper-cased), NULL when the policy has none."""
    rates = {policy.base_currency: 1.0, **policy.fx_rates}
    whens = " ".join(f"WHEN {sql_literal(code)} THEN {_double(rate)}" for code, rate in rates.items())
    return f"CASE {column} {whens} ELSE CASE upper({column}) {whens} END END"


#: The hash by which repeated ids are searched (``stateless_sql``, ``tier_ml.batch.ledger``): 32 bits
#: sort faster than 64, and a hash shared by chance only adds a candidate compared by
#: text. Tests set a constant to make every id a candidate.
ID_HASH = "CAST(hash({column}) >> 32 AS UINTEGER)"


def stateless_sql(policy: Policy, as_of_us: int, keep_raw: bool = False) -> str:
    """Per-row checks, in the same order as ``tier_ml.events.check_row``, into one table.

    ``ok`` marks the rows the rules see (valid, at or before ``as_of``); later rows
    stay with ``ok`` false rather than being filtered out here, because a filter on
    ``reason`` would evaluate every per-row check twice. A row whose time parses to
    after ``as_of`` has no ``reason`` either: it is invisible, not rejected (as in
    ``tier_ml.events.validate``); a row without a readable time is rejected.
    ``currency`` and ``channel`` are kept as read for the replay checks, and 32-bit hashes of ``event_id`` and
    ``order_id`` (``event_hash``, ``order_hash``, see ``ID_HASH``) are computed once
    here for the ledger's searches for repeated ids. Reject details are written later,
    only for rejected rows (see ``tier_ml.batch.rejects``). With ``keep_raw`` (a typed source, see
    ``keeps_raw_fields``) two more columns keep what the rejects need of the source:
    ``amount_raw`` as read and ``event_type_text``, the event type's text unless it is
    exactly one of the three names (so nearly always NULL).
    """
    return f"CREATE OR REPLACE TEMP TABLE checked AS {checked_select(policy, as_of_us, keep_raw)}"


def checked_select(policy: Policy, as_of_us: int, keep_raw: bool = False) -> str:
    """The query of ``stateless_sql`` (every row of ``src`` with its checks), to read or store."""
    priced = f"kind <> {CANCELLED}"
    kept = (
        ", amount_raw, CASE WHEN event_type IN ('placed', 'refunded', 'cancelled') THEN NULL "
        "ELSE event_type END AS event_type_text" if keep_raw else ""
    )
    amount_us = f"CAST(floor(amount_num * rate * 1e6 + {_double(0.5)}) AS BIGINT)"
    return f"""
    WITH typed AS (
        SELECT *, {_KIND_CODE} AS kind, {_rate_sql(policy, "currency")} AS rate FROM src
    ), judged AS (
        SELECT *,
           CASE
             WHEN at_us > {as_of_us} THEN NULL  -- rows after as_of are invisible, also for rejects
             WHEN {BEYOND_HEADER} IS NOT NULL THEN 'malformed_row'
             WHEN event_id IS NULL OR event_type IS NULL OR order_id IS NULL OR customer_id IS NULL
               OR occurred_at_missing THEN 'missing_field'
             WHEN kind IS NULL THEN 'unknown_event_type'
             WHEN at_us IS NULL THEN 'unparseable_time'
             WHEN {priced} AND (amount_missing OR currency IS NULL) THEN 'missing_field'
             WHEN {priced} AND amount_num IS NULL THEN 'unparseable_amount'
             WHEN {priced} AND NOT amount_num > 0 THEN 'non_positive_amount'
             WHEN {priced} AND rate IS NULL THEN 'unknown_currency'
             WHEN {priced} AND amount_num * rate >= {_double(MAX_AMOUNT)} THEN 'unparseable_amount'
           END AS reason
        FROM typed
    )
    SELECT row, event_id, CAST(kind AS TINYINT) AS event_type, order_id, customer_id, at_us,
           CASE WHEN reason IS NULL AND {priced} THEN {amount_us} ELSE 0 END AS amount_us,
           coalesce(region, '') AS region, currency, channel,
           reason IS NULL AND at_us <= {as_of_us} AS ok,
           reason, {ID_HASH.format(column='event_id')} AS event_hash, {ID_HASH.format(column='order_id')} AS order_hash{kept}
    FROM judged
    """


def stateless_detail_sql(policy: Policy) -> str:
    """The detail of a per-row reject, from the raw fields of ``src`` aliased ``s``."""
    kind = _KIND_CODE.replace("event_type", "s.event_type")
    q = "'''"  # a quote inside a SQL string literal
    before_amount, after_amount = too_large("\0", policy).split("\0")
    before_extra, after_extra = malformed_detail("\0").split("\0")
    return f"""
    CASE
      WHEN s.{BEYOND_HEADER} IS NOT NULL THEN {sql_literal(before_extra)} || s.{BEYOND_HEADER} || {sql_literal(after_extra)}
      WHEN s.event_id IS NULL THEN 'event_id is missing'
      WHEN s.event_type IS NULL THEN 'event_type is missing'
      WHEN s.order_id IS NULL THEN 'order_id is missing'
      WHEN s.customer_id IS NULL THEN 'customer_id is missing'
      WHEN s.occurred_at_missing THEN 'occurred_at is missing'
      WHEN {kind} IS NULL
        THEN 'event_type {q} || s.event_type || {q} is not placed, refunded or cancelled'
      WHEN s.at_us IS NULL THEN 'occurred_at {q} || s.occurred_at || {q} is not an ISO 8601 time'
      WHEN s.amount_missing THEN 'amount is missing'
      WHEN s.currency IS NULL THEN 'currency is missing'
      WHEN s.amount_num IS NULL THEN 'amount {q} || s.amount || {q} is not a number'
      WHEN NOT s.amount_num > 0 THEN 'amount {q} || s.amount || {q} must be positive'
      WHEN {_rate_sql(policy, "s.currency")} IS NULL
        THEN 'currency {q} || upper(s.currency) || {q} has no fx rate in the policy'
      ELSE {sql_literal(before_amount)} || s.amount || {sql_literal(after_amount)}
    END"""
