"""The vectorized batch path of the rules engine, in SQL on DuckDB.

It implements the two definitions of ``tier_ml.rules`` (spend steps of an order,
tier replay) and the validation of ``tier_ml.events`` as set-based SQL, so a
million customers with ten million events classify in seconds on one machine.
A test proves it agrees with the reference path row for row.

The replay is the running maximum of the eligible tier inside segments that
restart at each instant where a downgrade is allowed::

    tier[t] = max(eligible[s..t])  where s = the last instant <= t at which
                                    t_s - last_placed_at >= downgrade_grace

Those instants are the grace ends (``p + grace`` for a placement not followed
by another within the grace period) and any step at which the customer is past
their grace period.

The modules follow the stages of ``run_pipeline`` (``PIPELINE_STAGES``), in order:
``source`` (the input as view ``src``), ``validation`` (``validate``), ``ledger``,
``rejects``, ``orders``, ``placements`` and ``replay`` (``replay``), ``output``;
``pipeline`` runs them and holds the jobs built on them (``classify_to_files``,
``classify_frame``, ``classify_states``).

Other engines build on the stages, not on a copy of them: the Spark engine
(``tier_ml.engines.spark``) runs ``stateless_sql`` per partition and
``orders_sql`` + ``replay_stage`` + ``output_sql`` per bucket of customers, and
the feature pipeline (``features.build``) reads the tables ``run_pipeline``
documents through its ``on_stage`` hook and shares the replay's sort of the
placements through a ``PlacementsHook``. The names exported here are the
engine's interface; everything else in the package may change.
"""

from tier_ml.batch.ledger import REPLAY_CONTENT
from tier_ml.batch.orders import orders_sql
from tier_ml.batch.output import TIERS_FILE_TYPES, output_sql
from tier_ml.batch.pipeline import (
    JSON_LINES_SUFFIXES,
    PARQUET_SUFFIXES,
    PIPELINE_STAGES,
    REJECT_COLUMNS,
    BatchSummary,
    classify_frame,
    classify_reference_to_files,
    classify_states,
    classify_to_files,
    copy_format,
    run_pipeline,
    summarize,
    write_table,
    write_tiers_frame,
)
from tier_ml.batch.placements import PlacementsHook, SortedPlacements, customer_key_sql
from tier_ml.batch.replay import replay_stage
from tier_ml.batch.source import (
    connect,
    keeps_raw_fields,
    read_error,
    read_events,
    register_source,
    source_columns,
    sql_literal,
)
from tier_ml.batch.validation import (
    CANCELLED,
    PLACED,
    REFUNDED,
    checked_select,
    stateless_detail_sql,
    stateless_sql,
)

__all__ = [
    "CANCELLED",
    "JSON_LINES_SUFFIXES",
    "PARQUET_SUFFIXES",
    "PIPELINE_STAGES",
    "PLACED",
    "REFUNDED",
    "REJECT_COLUMNS",
    "REPLAY_CONTENT",
    "TIERS_FILE_TYPES",
    "BatchSummary",
    "PlacementsHook",
    "SortedPlacements",
    "checked_select",
    "classify_frame",
    "classify_reference_to_files",
    "classify_states",
    "classify_to_files",
    "connect",
    "copy_format",
    "customer_key_sql",
    "keeps_raw_fields",
    "orders_sql",
    "output_sql",
    "read_error",
    "read_events",
    "register_source",
    "replay_stage",
    "run_pipeline",
    "source_columns",
    "sql_literal",
    "stateless_detail_sql",
    "stateless_sql",
    "summarize",
    "write_table",
    "write_tiers_frame",
]
