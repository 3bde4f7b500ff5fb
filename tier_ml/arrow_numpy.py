"""Arrow <-> numpy for the engine's fixed-width columns, through their buffers.

pyarrow's own conversions (``Array.to_numpy``, ``pa.array`` of a numpy array) import
pandas at their first use, which costs every ``tier-ml classify`` run about a quarter
of a second before any work. The batch engine only moves plain integers and flags
between DuckDB and numpy, and for those the buffers are all a conversion needs.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

_DTYPES: dict[pa.DataType, type[np.generic]] = {
    pa.int8(): np.int8,
    pa.int16(): np.int16,
    pa.int32(): np.int32,
    pa.int64(): np.int64,
    pa.uint8(): np.uint8,
    pa.uint16(): np.uint16,
    pa.uint32(): np.uint32,
    pa.uint64(): np.uint64,
    pa.float32(): np.float32,
    pa.float64(): np.float64,
}


def _chunk_to_numpy(chunk: pa.Array) -> np.ndarray:
    if chunk.null_count or (chunk.type not in _DTYPES and chunk.type != pa.bool_()):
        return chunk.to_numpy(zero_copy_only=False)  # not the engine's kind of column: pyarrow's way
    data = chunk.buffers()[1]
    if chunk.type == pa.bool_():  # one bit per value, least significant first
        if data is None:
            return np.zeros(0, dtype=bool)
        bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little", count=chunk.offset + len(chunk))
        return bits[chunk.offset :].astype(bool)
    dtype = _DTYPES[chunk.type]
    if data is None:
        return np.zeros(0, dtype=dtype)
    return np.frombuffer(data, dtype=dtype, count=chunk.offset + len(chunk))[chunk.offset :]


def to_numpy(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A column without nulls as one numpy array.

    Like pyarrow's ``to_numpy``: a single chunk is shared with Arrow (read-only), several
    are copied into a new array. Columns with nulls, or of other types, go through pyarrow.
    """
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    parts = [_chunk_to_numpy(chunk) for chunk in chunks]
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return np.zeros(0, dtype=_DTYPES.get(values.type, bool))
    return np.concatenate(parts)


def to_arrow(values: np.ndarray, type: pa.DataType, mask: np.ndarray | None = None) -> pa.Array:
    """A numpy array as an Arrow array of the fixed-width ``type``; ``mask`` marks nulls (True)."""
    data = np.ascontiguousarray(values, dtype=_DTYPES[type])
    validity = None if mask is None else pa.py_buffer(np.packbits(~np.asarray(mask, dtype=bool), bitorder="little"))
    return pa.Array.from_buffers(type, len(data), [validity, pa.py_buffer(data)])


def arrow_table(columns: dict[str, np.ndarray | pa.Array | pa.ChunkedArray], type: pa.DataType = pa.int64()) -> pa.Table:
    """A table of named columns; numpy ones become ``type`` (``to_arrow``), Arrow ones stay."""
    arrays = [to_arrow(v, type) if isinstance(v, np.ndarray) else v for v in columns.values()]
    return pa.Table.from_arrays(arrays, names=list(columns))
