"""Engine choice for the batch commands: the embedded DuckDB path or Apache Spark.

Every engine runs the same definitions (``tier_ml.rules`` and the SQL of
``tier_ml.batch``) and writes the same files; they differ in where the work
runs. ``duckdb`` is the default (one machine, nothing to start); ``spark``
scales out to a cluster and needs the optional ``spark`` extra
(``pip install tier-ml[spark]``) and Java.
"""

from __future__ import annotations

#: Engines of the batch commands, default first.
BATCH_ENGINES = ("duckdb", "spark")


class EngineUnavailableError(RuntimeError):
    """The chosen engine cannot start here (a missing extra or Java); the message says how to fix it."""


def check_engine(name: str, allowed: tuple[str, ...] = BATCH_ENGINES) -> str:
    """``name`` when it is one of ``allowed``; a ValueError that lists the choices otherwise."""
    if name not in allowed:
        raise ValueError(f"--engine must be {' or '.join(allowed)}, not {name!r}")
    return name
