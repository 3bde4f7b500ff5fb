"""How ``tier_ml.parts`` cuts rows: every row once, in order, whole customers where asked."""

from __future__ import annotations

import numpy as np
import pytest

from tier_ml import parts


@pytest.mark.parametrize("rows", [0, 1, 2, 5, 9, 10, 11])
@pytest.mark.parametrize(("threads", "part_rows"), [(1, 10**9), (2, 10**9), (3, 4), (2, 1)])
def test_row_parts_cover_every_row_once_in_order(
    rows: int, threads: int, part_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parts, "THREADS", threads)
    monkeypatch.setattr(parts, "PART_ROWS", part_rows)
    cut = parts.row_parts(rows)
    covered = np.concatenate([np.arange(rows)[part] for part in cut]) if cut else np.zeros(0, int)
    np.testing.assert_array_equal(covered, np.arange(rows))
    assert all(part.stop > part.start for part in cut)
    assert len(cut) >= min(rows, threads)  # no thread left without a part when there are rows
    assert all(part.stop - part.start <= max(part_rows, 1) for part in cut)


def test_customer_parts_never_split_a_customer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parts, "PART_ROWS", 3)
    keys = np.array([1, 1, 1, 1, 2, 3, 3, 4, 4, 4, 5])
    starts = parts.run_starts(keys)
    cut = parts.customer_parts(starts, len(keys))
    assert cut[0].rows.start == 0 and cut[-1].rows.stop == len(keys)
    for part in cut:
        assert part.rows.start in starts  # begins at a customer's first row
        assert np.all(keys[part.rows][0] != keys[: part.rows.start][-1:])
    assert sum(p.customers.stop - p.customers.start for p in cut) == len(starts)
