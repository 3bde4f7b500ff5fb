"""Classify on Apache Spark with the definitions of the DuckDB batch path.

The batch path (``tier_ml.batch``) is a chain of SQL statements, each keyed by
one thing: a row (parsing and per-row checks), an ``event_id`` (replays), an
``order_id`` (duplicate orders, refunds and cancels against their order) or a
customer (spend per order, the tier replay, the output columns). Spark runs each
link where its key lives:

1. **rows** - ``mapInArrow`` runs the batch path's own per-row SQL
   (``stateless_sql``: parsing, reject reasons and their details) on DuckDB
   inside every Arrow batch, so text is parsed by exactly the same code;
2. **event_id, order_id** - three window/join steps in Spark, statement for
   statement the ``_ledger_sql`` of the batch path (they are plain window
   functions: the parts that must see rows of different customers);
3. **customers** - rows are grouped into buckets of customers
   (``hash(customer_id) mod n``) and every bucket runs the batch path's
   ``orders_sql``, the numpy replay kernel and ``output_sql`` on DuckDB with
   ``applyInPandas``. The tier replay is path dependent but per customer, so a
   bucket holds everything it needs and money is formatted by the same SQL.

The answer is the DuckDB path's, row for row and to the cent (tests compare
the written files). Inputs: Parquet (a file, a directory or a URI, read by
Spark); CSV and JSON lines are read on the driver by the batch path's reader
(they are for small files). Outputs: a local ``.csv``/``.parquet`` file is
merged from Spark's parts in ``customer_id`` order; a directory or URI gets
Spark's part files.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pandas as pd
import pyarrow as pa

from tier_ml.batch import (
    JSON_LINES_SUFFIXES,
    PARQUET_SUFFIXES,
    PLACED,
    REFUNDED,
    REJECT_COLUMNS,
    REPLAY_CONTENT,
    TIERS_FILE_TYPES,
    BatchSummary,
    connect,
    copy_format,
    orders_sql,
    output_sql,
    read_error,
    register_source,
    replay_stage,
    source_columns,
    sql_literal,
    stateless_detail_sql,
    stateless_sql,
)
from tier_ml.engines import EngineUnavailableError
from tier_ml.events import (
    BEYOND_HEADER,
    EVENT_FIELDS,
    REQUIRED_FIELDS,
    EventReadError,
    detect_format,
)
from tier_ml.policy import Policy

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

#: Stages of a Spark classification, for progress bars.
SPARK_STAGES = ("read", "validate", "ledger", "replay", "write")

#: Spark settings tier-ml relies on (set unless the session already has them).
SESSION_DEFAULTS = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.execution.arrow.maxRecordsPerBatch": "100000",
    "spark.ui.showConsoleProgress": "false",
}


def spark_session(master: str | None = None, app_name: str = "tier-ml") -> SparkSession:
    """The active SparkSession, or a new one from ``master``, ``SPARK_MASTER`` or Spark's config.

    Under ``spark-submit`` or on Databricks the session (and its master) already
    exists and is reused. Otherwise the master is ``master``, else the
    ``SPARK_MASTER`` environment variable, else ``spark.master`` from the
    standard Spark configuration (``spark-defaults.conf``, ``PYSPARK_SUBMIT_ARGS``),
    else ``local[*]``.
    """
    try:
        from pyspark import SparkConf
        from pyspark.sql import SparkSession
    except ImportError:
        raise EngineUnavailableError(
            "--engine spark needs pyspark, the spark extra of tier-ml: pip install 'pyspark>=3.5,<5'"
        ) from None
    active = SparkSession.getActiveSession()
    if active is not None and master is None:
        return _configure(active)
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise EngineUnavailableError(
            "--engine spark needs Java 17 or later: install it "
            "(apt-get install openjdk-17-jre-headless) or set JAVA_HOME"
        )
    master = master or os.environ.get("SPARK_MASTER")
    conf = SparkConf()
    if not master and not conf.contains("spark.master"):
        master = "local[*]"
    if (master or conf.get("spark.master", "")).startswith("local"):
        # Local workers are this interpreter, with tier-ml and DuckDB installed.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name).config(conf=conf)
    if master:
        builder = builder.master(master)
    for key, value in SESSION_DEFAULTS.items():
        if not conf.contains(key):
            builder = builder.config(key, value)
    return _configure(builder.getOrCreate())


def _configure(spark: SparkSession) -> SparkSession:
    spark.conf.set("spark.sql.session.timeZone", "UTC")  # instants print and parse as UTC
    spark.conf.set("spark.sql.execution.arrow.pyspark.enabled", "true")
    return spark


# --- reading ------------------------------------------------------------------------------------


_URI = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]+):/+")


def _target(path: str | Path | pd.DataFrame) -> str | Path | pd.DataFrame:
    """A URI as Spark wants it (``pathlib`` turns ``s3://b/k`` into ``s3:/b/k``); paths unchanged."""
    if isinstance(path, pd.DataFrame):
        return path
    match = _URI.match(str(path))
    if match is None:
        return path
    scheme, rest = match.group(1), str(path)[match.end() :]
    return f"{scheme}:/{rest}" if scheme in {"dbfs", "file"} else f"{scheme}://{rest}"


def _has_scheme(path: str | Path) -> bool:
    return _URI.match(str(path)) is not None


def read_source(spark: SparkSession, source: str | Path | pd.DataFrame) -> DataFrame:
    """The input as a Spark DataFrame: ``row`` (1-based, file order) and the raw columns.

    Parquet is read by Spark (a file, a directory of files, or a URI). Files of a
    directory are numbered one after the other in path order. CSV, JSON lines and
    pandas frames go through the batch path's reader on the driver, so they are
    read exactly as ``--engine duckdb`` reads them.
    """
    from pyspark.sql import functions as F

    source = _target(source)
    if isinstance(source, pd.DataFrame) or _driver_format(source):
        con = connect()
        try:
            register_source(con, source)
            table = con.sql("SELECT * FROM src_raw").to_arrow_table()
        except duckdb.Error as exc:  # a row that breaks the file's format (a frame is never one)
            raise read_error(source, exc) from None
        finally:
            con.close()
        return _from_arrow(spark, table)
    try:
        raw = spark.read.parquet(str(source))
        raw = raw.select(
            "*",
            F.col("_metadata.file_path").alias("_file"),
            F.col("_metadata.row_index").alias("_index"),
        )
        raw.schema  # noqa: B018 - resolves the plan: a bad file fails here, not mid-job
    except Exception as exc:  # Spark raises AnalysisException, Py4JJavaError, ...
        raise EventReadError(f"{source}: cannot read parquet events: {_first_line(exc)}") from None
    missing = [name for name in REQUIRED_FIELDS if name not in raw.columns]
    if missing:
        raise EventReadError(
            f"{source}: missing required columns {missing}; found {sorted(raw.columns)}"
        )
    if _has_scheme(source) or Path(str(source)).is_dir():
        counts = sorted(raw.groupBy("_file").count().collect())
    else:
        counts = [("", 0)]  # one file: no job needed to number its rows
    offsets, total = [], 0
    for file, count in counts:
        offsets.append((file, total))
        total += count
    if len(offsets) == 1:
        row = F.col("_index") + 1
    else:
        starts = spark.createDataFrame(offsets, "_file string, _offset long")
        raw = raw.join(F.broadcast(starts), "_file")
        row = F.col("_offset") + F.col("_index") + 1
    dropped = {"_file", "_index", "_offset", "row", BEYOND_HEADER}  # BEYOND_HEADER: CSV rows only
    columns = [c for c in raw.columns if c not in dropped]
    return raw.select(row.cast("long").alias("row"), *columns)


def _driver_format(source: str | Path) -> bool:
    """True for CSV and JSON lines (read on the driver); Parquet files, folders and URIs go to Spark."""
    path = Path(str(source))
    if _has_scheme(source):
        if path.suffix.lower() in {"", ".parquet", ".pq"}:
            return False  # a Parquet file or folder on shared storage
        raise EventReadError(
            f"{source}: --engine spark reads CSV and JSON lines only from local files; use Parquet"
        )
    if path.is_dir():
        return False
    kind = detect_format(path)
    if not path.is_file():
        raise EventReadError(f"{path}: no such events file")
    return kind != "parquet"


def _from_arrow(spark: SparkSession, table: pa.Table) -> DataFrame:
    try:
        return spark.createDataFrame(table)  # pyspark >= 4 takes Arrow as it is
    except TypeError:
        return spark.createDataFrame(table.to_pandas())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- stage 1: per-row checks, by the batch path's SQL on DuckDB in every Arrow batch ----------

_CHECKED_SCHEMA = (
    "row long, event_id string, event_type byte, order_id string, customer_id string, "
    "at_us long, amount_us long, region string, currency string, channel string, "
    "ok boolean, reason string, detail string"
)
_TEXT_SCHEMA = "row long, " + ", ".join(f"{name} string" for name in EVENT_FIELDS)


def _src_view(con: Any, batch: pa.RecordBatch) -> None:
    """View ``src`` over one Arrow batch, built like ``tier_ml.batch.register_source``."""
    con.register("src_raw", pa.Table.from_batches([batch]))
    types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE src_raw)").fetchall())
    columns = source_columns(types)
    con.execute(f"CREATE OR REPLACE TEMP VIEW src AS SELECT {columns} FROM src_raw")


def _check_rows(
    policy: Policy, as_of_us: int
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The per-row stage for ``mapInArrow``: ``checked`` rows plus what the later stages need."""
    statement = stateless_sql(policy, as_of_us)
    detail = stateless_detail_sql(policy)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        con = connect(threads=1, memory_limit="1GB")
        try:
            for batch in batches:
                _src_view(con, batch)
                con.execute(statement)
                yield from (
                    con.sql(
                        f"""
                    SELECT c.row, c.event_id, c.event_type, c.order_id, c.customer_id, c.at_us,
                           c.amount_us, c.region, upper(coalesce(s.currency, '')) AS currency,
                           coalesce(s.channel, '') AS channel, c.ok, c.reason,
                           CASE WHEN c.reason IS NOT NULL THEN {detail} END AS detail
                    FROM checked c JOIN src s ON s.row = c.row
                    """
                    )
                    .to_arrow_table()
                    .to_batches()
                )
        finally:
            con.close()

    return run


def _raw_texts(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The raw fields as text (``src`` of the batch path): what a rejects file shows."""
    con = connect(threads=1, memory_limit="1GB")
    try:
        for batch in batches:
            _src_view(con, batch)
            fields = ", ".join(EVENT_FIELDS)
            yield from con.sql(f"SELECT row, {fields} FROM src").to_arrow_table().to_batches()
    finally:
        con.close()


# --- stage 2: replays, duplicate orders, refunds against their order (``_ledger_sql``) --------


@dataclass
class Ledger:
    """The validated ledger: what the per-customer stage needs, and what was rejected."""

    placed_orders: DataFrame
    adjustments: DataFrame
    rejects: DataFrame  # row, reason, detail
    replays: DataFrame  # rows that repeat an event with the same content
    cached: tuple[DataFrame, ...] = ()  # the two window stages, read by tiers and rejects alike

    def release(self) -> None:
        """Free the cached window stages."""
        for frame in self.cached:
            frame.unpersist()


def build_ledger(checked: DataFrame) -> Ledger:
    """Replays by ``event_id``, duplicate orders and adjustments by ``order_id``, as the batch path."""
    from pyspark import StorageLevel
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    ok = checked.filter("ok")
    # copies: the smallest content of a repeated event_id is kept (ORDER BY content, row).
    by_event = Window.partitionBy("event_id").orderBy(*REPLAY_CONTENT, "row")
    content = F.struct(*REPLAY_CONTENT)
    repeated = ok.select(
        *ok.columns,
        F.row_number().over(by_event).alias("copy"),
        (content == F.first(content).over(by_event)).alias("same_content"),
    ).persist(StorageLevel.MEMORY_AND_DISK)
    copies = repeated.filter("copy > 1")
    unique_events = repeated.filter("copy = 1").drop("copy", "same_content")
    # placed_repeats: the earliest placement of an order wins (ORDER BY at_us, event_id).
    by_order = Window.partitionBy("order_id").orderBy("at_us", "event_id")
    placed = (
        unique_events.filter(F.col("event_type") == PLACED)
        .select(
            "*",
            F.row_number().over(by_order).alias("nth"),
            F.first("event_id").over(by_order).alias("first_event_id"),
        )
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    placed_orders = placed.filter("nth = 1").drop("nth", "first_event_id")
    # adjustments: refunds and cancels against the order they name.
    order = placed_orders.select(
        "order_id",
        F.col("customer_id").alias("order_customer"),
        F.col("at_us").alias("placed_at_us"),
        F.col("amount_us").alias("value_us"),
        F.col("row").alias("placed_row"),
        F.lit(True).alias("_found"),
    )
    adjustments = (
        unique_events.filter(F.col("event_type") != PLACED)
        .join(order, "order_id", "left")
        .select(
            "row",
            "event_id",
            "event_type",
            "order_id",
            "customer_id",
            "at_us",
            "amount_us",
            "order_customer",
            "placed_at_us",
            "value_us",
            "placed_row",
            "channel",
            F.expr(
                "CASE WHEN _found IS NULL OR placed_at_us > at_us THEN 'unknown_order' "
                "WHEN order_customer <> customer_id THEN 'customer_mismatch' END"
            ).alias("reason"),
        )
    )
    kind = F.expr(f"CASE event_type WHEN {REFUNDED} THEN 'refunded' ELSE 'cancelled' END")
    found = [
        checked.filter("reason IS NOT NULL").select("row", "reason", "detail"),
        copies.filter("NOT same_content").select(
            "row",
            F.lit("conflicting_replay").alias("reason"),
            F.concat(
                F.lit("event_id "), "event_id", F.lit(" was already used for different content")
            ).alias("detail"),
        ),
        placed.filter("nth > 1").select(
            "row",
            F.lit("duplicate_order").alias("reason"),
            F.concat(
                F.lit("order "),
                "order_id",
                F.lit(" was already placed by event "),
                "first_event_id",
            ).alias("detail"),
        ),
        adjustments.filter("reason IS NOT NULL").select(
            "row",
            "reason",
            F.when(
                F.col("reason") == "unknown_order",
                F.concat(
                    kind,
                    F.lit(" event for order "),
                    "order_id",
                    F.lit(", not placed at or before it"),
                ),
            )
            .otherwise(
                F.concat(
                    F.lit("order "),
                    "order_id",
                    F.lit(" belongs to customer "),
                    "order_customer",
                    F.lit(", not "),
                    "customer_id",
                )
            )
            .alias("detail"),
        ),
    ]
    rejects = found[0].unionByName(found[1]).unionByName(found[2]).unionByName(found[3])
    return Ledger(
        placed_orders=placed_orders.select(
            "row",
            "event_id",
            "event_type",
            "order_id",
            "customer_id",
            "at_us",
            "amount_us",
            "region",
            "channel",
        ),
        adjustments=adjustments.filter("reason IS NULL"),
        rejects=rejects,
        replays=copies.filter("same_content").select("row"),
        cached=(repeated, placed),
    )


# --- stage 3: per customer bucket, the batch path's orders SQL, replay kernel and output -----

#: The tiers file's columns in Spark's types (``TIERS_FILE_TYPES``, the batch path's file).
_SPARK_TYPES = {"VARCHAR": "string", "DECIMAL(18, 2)": "decimal(18,2)", "BIGINT": "long"}
TIERS_SCHEMA = ", ".join(f"{name} {_SPARK_TYPES[kind]}" for name, kind in TIERS_FILE_TYPES.items())
#: The rules engine's state per customer (``customer_state`` of the batch path), for features.
STATE_SCHEMA = (
    "customer_id string, tier long, eligible long, qualifying_us long, qualifying_orders long, "
    "region string, last_placed_us long, tier_since_us long, tier_changes long, pending_us long, "
    "grace_ends_at_us long, next_change_at_us long"
)
_OUTPUTS = {"tiers": (TIERS_SCHEMA, "tiers_out"), "state": (STATE_SCHEMA, "customer_state")}
_PLACED_ROW, _ADJUSTMENT_ROW = 1, 0  # the two kinds of rows a customer bucket receives
_BUCKET_COLUMNS = (
    "kind",
    "row",
    "event_id",
    "event_type",
    "order_id",
    "customer_id",
    "at_us",
    "amount_us",
    "region",
    "order_customer",
    "placed_at_us",
    "value_us",
    "placed_row",
)
_PLACED_COLUMNS = "row, event_id, event_type, order_id, customer_id, at_us, amount_us, region"
_ADJUSTMENT_COLUMNS = (
    "row, event_id, event_type, order_id, customer_id, at_us, amount_us, order_customer, "
    "placed_at_us, value_us, CAST(placed_row AS BIGINT) AS placed_row, CAST(NULL AS VARCHAR) AS reason"
)


def _classify_bucket(
    policy: Policy, as_of_us: int, output: str = "tiers"
) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """The customer stage for ``applyInPandas``: one bucket of customers through the batch path.

    ``output`` is ``tiers`` (the output columns) or ``state`` (the engine's integer state).
    """
    schema, table = _OUTPUTS[output]
    names = [part.split()[0] for part in schema.split(", ")]

    def run(rows: pd.DataFrame) -> pd.DataFrame:
        if not (rows["kind"] == _PLACED_ROW).any():
            return pd.DataFrame({name: pd.Series(dtype=object) for name in names})
        con = connect(threads=1, memory_limit="1GB")
        try:
            con.register("bucket", rows)
            con.execute(
                f"CREATE TEMP TABLE placed_orders AS SELECT {_PLACED_COLUMNS} FROM bucket WHERE kind = {_PLACED_ROW}"
            )
            con.execute(
                f"CREATE TEMP TABLE adjustments AS SELECT {_ADJUSTMENT_COLUMNS} FROM bucket WHERE kind = {_ADJUSTMENT_ROW}"
            )
            con.unregister("bucket")
            con.execute("CREATE TEMP TABLE checked AS SELECT row, event_id FROM placed_orders")
            # Keys are local to the bucket: the kernel needs dense integers, not global ones.
            con.execute(
                "CREATE TEMP TABLE customers AS SELECT customer_id, "
                "CAST(row_number() OVER (ORDER BY customer_id) - 1 AS INTEGER) AS ckey "
                "FROM (SELECT DISTINCT customer_id FROM placed_orders)"
            )
            con.execute(
                "CREATE TEMP TABLE regions AS SELECT region, "
                "CAST(row_number() OVER (ORDER BY region) - 1 AS INTEGER) AS rkey "
                "FROM (SELECT DISTINCT region FROM placed_orders)"
            )
            for statement in orders_sql(policy, as_of_us):
                con.execute(statement)
            replay_stage(con, policy, as_of_us)
            if output == "tiers":
                con.execute(output_sql(policy))
            return con.sql(f"SELECT * FROM {table}").to_arrow_table().to_pandas()
        finally:
            con.close()

    return run


# --- the job ----------------------------------------------------------------------------------


@dataclass
class SparkClassification:
    """Lazy Spark results of a classification: tiers and rejects with the batch path's columns."""

    rows: DataFrame
    tiers: DataFrame
    rejects: DataFrame
    replays: DataFrame
    checked: DataFrame  # persisted; ``release()`` frees it
    ledger: Ledger

    def release(self) -> None:
        """Free the cached stages once the results are written or collected."""
        self.ledger.release()
        self.checked.unpersist()


def classify_spark(
    spark: SparkSession,
    policy: Policy,
    source: str | Path | pd.DataFrame,
    as_of_us: int,
    buckets: int | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> SparkClassification:
    """Classify ``source`` on Spark; the frames are lazy until written or collected."""
    step = on_stage or (lambda _stage: None)
    raw = read_source(spark, source)
    step("read")
    checked = check_rows(raw, policy, as_of_us)
    step("validate")
    ledger = build_ledger(checked)
    step("ledger")
    tiers = customer_stage(
        spark, ledger, policy, as_of_us, "tiers", buckets or bucket_count(spark, raw)
    )
    rejects = _with_texts(raw, ledger.rejects)
    return SparkClassification(
        rows=raw,
        tiers=tiers,
        rejects=rejects,
        replays=ledger.replays,
        checked=checked,
        ledger=ledger,
    )


#: Events per bucket of customers: big enough that the per-bucket work dominates its overhead,
#: small enough for one Python worker (about 1.1 KB per event measured; see docs/spark.md).
EVENTS_PER_BUCKET = 2_500_000
#: Spark settings that override ``bucket_count``; spark-submit passes on ``spark.*`` keys only.
BUCKETS_SETTINGS = ("spark.tier_ml.buckets", "tier_ml.buckets")


def bucket_count(spark: SparkSession, raw: DataFrame) -> int:
    """Buckets of customers for ``raw``: one per ``EVENTS_PER_BUCKET`` events, at least one per core.

    ``--conf spark.tier_ml.buckets=N`` (or ``tier_ml.buckets`` set on the session)
    overrides it: smaller buckets on a cluster, or more for a skewed data set.
    """
    configured = next(filter(None, (spark.conf.get(k, None) for k in BUCKETS_SETTINGS)), None)
    if configured:
        return max(1, int(configured))
    rows = raw.count()  # Parquet answers from its footers
    return max(spark.sparkContext.defaultParallelism, -(-rows // EVENTS_PER_BUCKET))


def check_rows(raw: DataFrame, policy: Policy, as_of_us: int) -> DataFrame:
    """The per-row stage (``checked``), persisted: the ledger, the rejects and counts read it."""
    from pyspark import StorageLevel

    return raw.mapInArrow(_check_rows(policy, as_of_us), _CHECKED_SCHEMA).persist(
        StorageLevel.MEMORY_AND_DISK
    )


def customer_stage(
    spark: SparkSession,
    ledger: Ledger,
    policy: Policy,
    as_of_us: int,
    output: str = "tiers",
    buckets: int | None = None,
) -> DataFrame:
    """Every customer's tier (``tiers`` columns or integer ``state``), by buckets of customers."""
    from pyspark.sql import functions as F

    count = buckets or max(1, int(spark.conf.get("spark.sql.shuffle.partitions")))
    placed = ledger.placed_orders.select(
        F.lit(_PLACED_ROW).cast("byte").alias("kind"),
        "*",
        *(
            F.lit(None).cast(t).alias(c)
            for c, t in (
                ("order_customer", "string"),
                ("placed_at_us", "long"),
                ("value_us", "long"),
                ("placed_row", "long"),
            )
        ),
    )
    adjusted = ledger.adjustments.select(
        F.lit(_ADJUSTMENT_ROW).cast("byte").alias("kind"),
        *[c for c in _BUCKET_COLUMNS[1:8]],
        F.lit(None).cast("string").alias("region"),
        "order_customer",
        "placed_at_us",
        "value_us",
        "placed_row",
    )
    bucketed = placed.select(*_BUCKET_COLUMNS).unionByName(adjusted.select(*_BUCKET_COLUMNS))
    bucket = F.pmod(F.xxhash64("customer_id"), F.lit(count)).alias("bucket")
    return bucketed.groupBy(bucket).applyInPandas(
        _classify_bucket(policy, as_of_us, output), _OUTPUTS[output][0]
    )


def _with_texts(raw: DataFrame, found: DataFrame) -> DataFrame:
    """Rejects with the raw fields as text, in the batch path's columns."""
    from pyspark.sql import functions as F

    rows = found.select("row").distinct()
    texts = raw.join(F.broadcast(rows), "row", "left_semi").mapInArrow(_raw_texts, _TEXT_SCHEMA)
    return found.join(texts, "row").select(*REJECT_COLUMNS)


def classify_spark_to_files(
    policy: Policy,
    source: str | Path | pd.DataFrame,
    as_of_us: int,
    out: Path | str,
    rejects_out: Path | str | None = None,
    spark: SparkSession | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> BatchSummary:
    """The ``tier-ml classify --engine spark`` job: the same files as the DuckDB path."""
    from pyspark import StorageLevel

    spark = spark or spark_session()
    step = on_stage or (lambda _stage: None)
    result = classify_spark(spark, policy, source, as_of_us, on_stage=step)
    tiers = result.tiers.persist(StorageLevel.MEMORY_AND_DISK)
    rejects = result.rejects.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        step("replay")
        write_frame(tiers, out, order_by=("customer_id",))
        if rejects_out is not None:
            write_frame(rejects, rejects_out, order_by=("row", "reason"))
        per_tier = dict(tiers.groupBy("tier").count().collect())
        by_reason = dict(sorted(rejects.groupBy("reason").count().collect()))
        summary = BatchSummary(
            rows=result.rows.count(),
            rejects_by_reason={str(k): int(v) for k, v in by_reason.items()},
            replays=result.replays.count(),
            customers_by_tier={name: int(per_tier.get(name, 0)) for name in policy.tier_names},
        )
        step("write")
        return summary
    finally:
        tiers.unpersist()
        rejects.unpersist()
        result.release()


def classify_spark_frame(
    policy: Policy,
    source: str | Path | pd.DataFrame,
    as_of_us: int,
    spark: SparkSession | None = None,
    rejects: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Classify in memory (small data): tiers and rejects as pandas frames, sorted like the files.

    ``rejects=False`` skips the rejects (one Spark job less) and returns None for them.
    """
    result = classify_spark(spark or spark_session(), policy, source, as_of_us)
    try:
        tiers = result.tiers.toPandas().sort_values("customer_id").reset_index(drop=True)
        found = None
        if rejects:
            found = result.rejects.toPandas().sort_values(["row", "reason"]).reset_index(drop=True)
    finally:
        result.release()
    return tiers, found


# --- writing ----------------------------------------------------------------------------------


def write_frame(frame: DataFrame, out: Path | str, order_by: tuple[str, ...]) -> None:
    """Write a result as one local file (CSV, Parquet or JSON lines by suffix) or as a Spark directory.

    A local path with a ``.csv``, ``.parquet`` or ``.jsonl`` suffix gets a single file,
    ordered by ``order_by`` and written by DuckDB from Spark's Parquet parts, so it is
    byte for byte the file ``--engine duckdb`` writes. Any other target (a
    directory, ``s3://``, ``hdfs://``, ``dbfs:/``) gets Spark's part files.
    """
    target = str(_target(out))
    suffix = Path(target).suffix.lower()
    single = {".csv", *PARQUET_SUFFIXES, *JSON_LINES_SUFFIXES}
    if _has_scheme(target) or suffix not in single:
        writer = frame.orderBy(*order_by).write.mode("overwrite")
        if suffix == ".csv":
            writer.option("header", True).option("escape", '"').csv(target)
        else:
            writer.parquet(target)
        return
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = path.parent / f".{path.name}.parts-{uuid.uuid4().hex[:8]}"
    try:
        frame.write.mode("overwrite").parquet(str(parts))
        fmt = copy_format(path)
        con = connect()
        try:
            files = sorted(str(p) for p in parts.glob("*.parquet"))
            if files:
                scan = f"read_parquet([{', '.join(sql_literal(f) for f in files)}])"
            else:  # no rows: Spark writes no part; keep the schema from an empty frame
                empty = frame.limit(0).toPandas()
                con.register("empty_frame", empty)
                scan = "empty_frame"
            keys = ", ".join(order_by)
            con.execute(
                f"COPY (SELECT * FROM {scan} ORDER BY {keys}) TO {sql_literal(str(path))} ({fmt})"
            )
        finally:
            con.close()
    finally:
        shutil.rmtree(parts, ignore_errors=True)
