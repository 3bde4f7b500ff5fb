"""An MLflow server that does not answer is a one-line error at once, not minutes of retries."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tier_ml.cli import app
from training.tracking import TrackingUnreachableError, check_reachable


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again on leaving: connections are refused


@pytest.fixture
def answering_server() -> Iterator[str]:
    """A local HTTP server that answers every path with 404 (not MLflow, but it answers)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_server_that_refuses_connections_is_named_in_one_line() -> None:
    uri = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(TrackingUnreachableError) as raised:
        check_reachable(uri, timeout_s=2)
    assert str(raised.value).startswith(f"MLflow tracking server {uri} does not answer")
    assert "\n" not in str(raised.value)


def test_any_answer_counts_and_local_stores_are_not_probed(answering_server: str) -> None:
    check_reachable(answering_server)  # 404 on /health: it answers, MLflow reports the rest
    check_reachable("sqlite:///nowhere/mlflow.db")
    check_reachable("file:///nowhere/mlruns")


def test_score_against_a_dead_server_exits_2_with_one_line(tmp_path: Path) -> None:
    events = tmp_path / "events.csv"
    events.write_text(
        "event_id,event_type,order_id,customer_id,occurred_at,amount,currency,channel,region\n"
        "e1,placed,o1,c1,2025-01-01T00:00:00Z,120,USD,web,\n"
    )
    uri = f"http://127.0.0.1:{_closed_port()}"
    result = CliRunner().invoke(app, ["score", "--events", str(events), "--as-of", "2025-06-30",
                                      "--out", str(tmp_path / "scores.csv"), "--tracking-uri", uri])
    assert result.exit_code == 2, result.output
    assert f"{uri} does not answer" in " ".join(result.output.split())
    assert "Traceback" not in result.output
