"""A session-scoped local Spark for the Spark engine tests.

Spark needs the ``spark`` extra (pyspark) and Java. Outside CI the tests skip
with the reason when either is missing; in CI (``CI=true``) they must run, so a
missing piece is an error there, not a skip.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

# Trained, registered models on simulated data (session-scoped, shared with the training tests).

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _missing() -> str | None:
    if importlib.util.find_spec("pyspark") is None:
        return "pyspark is not installed (pip install 'tier-ml[spark]')"
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return "Java is not installed (scripts/ensure-java.sh installs it)"
    return None


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    """``local[2]`` with two shuffle partitions: small data, few tasks, quick tests."""
    reason = _missing()
    if reason is not None:
        if IN_CI:
            pytest.fail(f"the Spark tests must run in CI: {reason}")
        pytest.skip(reason)
    from pyspark.sql import SparkSession

    from tier_ml.engines.spark import spark_session

    os.environ.setdefault("PYSPARK_PYTHON", __import__("sys").executable)
    session = (
        SparkSession.builder.master("local[2]")
        .appName("tier-ml-tests")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.default.parallelism", "2")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", "1g")
        .config(
            "spark.sql.adaptive.enabled", "false"
        )  # tiny data: one job per query, not one per stage
        .config("spark.python.worker.reuse", "true")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    spark_session()  # the engine's own settings (UTC, Arrow) on this session
    yield session
    session.stop()
