"""Arrow <-> numpy through buffers (``tier_ml.arrow_numpy``) agrees with pyarrow's own conversions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tier_ml.arrow_numpy import arrow_table, to_arrow, to_numpy

TYPES = [pa.int8(), pa.int32(), pa.int64(), pa.uint32(), pa.uint64(), pa.float64()]


@pytest.mark.parametrize("type_", TYPES, ids=str)
def test_sliced_and_chunked_columns_match_pyarrow(type_: pa.DataType) -> None:
    rng = np.random.default_rng(5)
    values = rng.integers(0, 100, size=1000).astype(type_.to_pandas_dtype())
    whole = pa.array(values, type=type_)
    chunked = pa.chunked_array([whole.slice(3, 400), whole.slice(500, 7), whole.slice(0, 0), whole.slice(999)])
    for column in (whole, whole.slice(17, 300), chunked, pa.chunked_array([whole.slice(5, 9)])):
        converted = to_numpy(column)
        assert converted.dtype == column.to_numpy().dtype
        np.testing.assert_array_equal(converted, column.to_numpy())


def test_flags_at_any_bit_offset() -> None:
    flags = pa.array(np.random.default_rng(1).random(203) < 0.4)
    for start in range(9):
        part = flags.slice(start, 150 - start)
        np.testing.assert_array_equal(to_numpy(part), part.to_numpy(zero_copy_only=False))
    chunked = pa.chunked_array([flags.slice(3, 10), flags.slice(100, 50)])
    np.testing.assert_array_equal(to_numpy(chunked), chunked.to_numpy())


def test_columns_with_nulls_or_text_go_through_pyarrow() -> None:
    with_null = pa.array([1, None, 3], type=pa.int64())
    np.testing.assert_array_equal(to_numpy(with_null), with_null.to_numpy(zero_copy_only=False))
    text = pa.array(["a", "b"])
    assert list(to_numpy(text)) == ["a", "b"]


def test_to_arrow_keeps_values_and_marks_nulls() -> None:
    values = np.arange(11, dtype=np.int64) * 7
    mask = values % 3 == 0
    array = to_arrow(values, pa.int64(), mask=mask)
    assert array.to_pylist() == [None if m else int(v) for v, m in zip(values, mask, strict=True)]
    assert array.null_count == int(mask.sum())
    array.validate(full=True)
    assert to_arrow(values[::2], pa.uint32()).to_pylist() == [int(v) for v in values[::2]]  # strided, cast


def test_arrow_table_converts_numpy_and_keeps_arrow_columns() -> None:
    table = arrow_table({"n": np.array([1, 2]), "s": pa.array(["x", "y"])})
    assert table.schema.field("n").type == pa.int64()
    assert table.to_pydict() == {"n": [1, 2], "s": ["x", "y"]}


def test_classify_on_the_command_line_does_not_import_pandas(tmp_path: Path) -> None:
    """pandas costs every run a quarter of a second before any work (see tier_ml.events._pandas)."""
    events = tmp_path / "events.csv"
    events.write_text(
        "event_id,event_type,order_id,customer_id,occurred_at,amount,currency,channel,region\n"
        "e1,placed,o1,c1,2025-01-01T00:00:00Z,120,USD,web,\n"
        "e2,placed,o2,c2,2025-01-01T00:00:00Z,80,USD,web,EU\n"
        "e3,placed,o3,c2,2025-01-01T00:00:00Z,80,USD,web,EU\n"
        "e4,refunded,o9,c2,2025-01-02T00:00:00Z,5,USD,web,EU\n"
    )
    script = (
        "import sys\nfrom tier_ml.cli import app\n"
        f"sys.argv = ['tier-ml', 'classify', '--events', {str(events)!r}, '--as-of', '2025-06-30',"
        f" '--out', {str(tmp_path / 'tiers.csv')!r}, '--rejects', {str(tmp_path / 'rejects.csv')!r}]\n"
        "try:\n    app()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "print('PANDAS', 'pandas' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "PANDAS False" in done.stdout
    assert (tmp_path / "rejects.csv").read_text().count("unknown_order") == 1
