"""Crash safety: an ingest killed with SIGKILL half-way, then run again on the same file, leaves
the store exactly as one clean run (no event lost, none counted twice)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from sqlalchemy import func, select

from tests.integration.store.support import simulated, snapshot
from tier_ml.events import frame_records, parse_instant, read_events
from tier_ml.store.db import READ_ONLY
from tier_ml.store.repository import EVENTS
from tier_ml.store.service import apply_events, open_store

NOW = "2026-01-01T00:00:00Z"
BATCH = "100"


def _ingest_command(events: Path, url: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        "from tier_ml.cli import app; app()",
        "ingest",
        str(events),
        "--now",
        NOW,
        "--db",
        url,
        "--batch-size",
        BATCH,
    ]


def _run(events: Path, url: str) -> None:
    done = subprocess.run(_ingest_command(events, url), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr


def _ledger_size(engine) -> int:
    with engine.connect().execution_options(**{READ_ONLY: True}) as connection:
        return int(connection.execute(select(func.count()).select_from(EVENTS)).scalar())


def test_sigkill_mid_ingest_then_rerun_equals_a_clean_run(new_store_url, tmp_path: Path) -> None:
    events_frame, _ = simulated(1_000)
    events = tmp_path / "events.csv"
    events_frame.to_csv(events, index=False)
    total = len(events_frame)

    crashed_url = new_store_url()
    crashed = open_store(crashed_url)  # schema first, so the poll below can count rows
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        _ingest_command(events, crashed_url),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while _ledger_size(crashed) < total // 4:
            assert process.poll() is None, "the ingest ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
    assert 0 < _ledger_size(crashed) < total * 0.95  # killed mid-way, some batches committed

    _run(events, crashed_url)
    clean = open_store(new_store_url())  # the same batches, in one uninterrupted run
    rows = frame_records(read_events(events))
    for start in range(0, len(rows), int(BATCH)):
        apply_events(clean, rows[start : start + int(BATCH)], parse_instant(NOW))
    try:
        got, want = snapshot(crashed), snapshot(clean)
        for part in ("ledger", "audit", "outbox", "orders", "policies"):
            assert got[part] == want[part], part
        pd.testing.assert_frame_equal(got["states"], want["states"])
        assert len(got["ledger"]) > 0.99 * total - 200  # all but the rejected and replayed rows
    finally:
        crashed.dispose()
        clean.dispose()
