"""Benchmark of outbox delivery: messages/s through the dispatcher against the floor of the
same HTTP POSTs sent without the outbox.

Usage::

    .venv/bin/python benchmarks/bench_notify.py [--messages 2000] [--customers 500] [--runs 3]
        [--backends sqlite,postgresql]

``--messages`` outbox rows (about ``messages / customers`` per customer, so the
in-order rule makes the dispatcher work in rounds) are delivered to one signed
webhook on a local ``http.server`` receiver (threaded, 127.0.0.1). The floor is
the same number of signed POSTs of the same bodies with the same HTTP client,
no store: the ratio is what claiming, ordering and recording cost on top of the
network. PostgreSQL runs when ``TIER_ML_TEST_POSTGRES_URL`` is set (a fresh
schema, dropped afterwards). Prints a Markdown section and writes it to
``docs/bench/notify.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import make_url

from tier_ml.notify.config import parse_channels
from tier_ml.notify.dispatcher import dispatch
from tier_ml.notify.messages import MessageContext, OutboxMessage, canonical_json, webhook_document
from tier_ml.notify.senders import build_senders, post_signed
from tier_ml.store.models import OutboxRow
from tier_ml.store.service import open_store

SECRET_ENV = "TIER_ML_BENCH_SECRET"
NOW = 1_767_225_600_000_000  # 2026-01-01


class Receiver(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


def messages(count: int, customers: int) -> list[dict]:
    rows = []
    for i in range(count):
        customer = f"C{i % customers:06d}"
        payload = {"kind": "tier_upgraded", "customer_id": customer, "old_tier": "Silver",
                   "new_tier": "Gold", "at": "2025-12-31T00:00:00Z", "policy_version": 1,
                   "idempotency_key": f"k{i:08d}"}  # fmt: skip
        rows.append({"idempotency_key": f"k{i:08d}", "kind": "tier_upgraded", "customer_id": customer,
                     "payload": json.dumps(payload), "created_at_us": NOW})  # fmt: skip
    return rows


def run_dispatch(url: str, rows: list[dict], hook: str) -> float:
    engine = open_store(url)
    with engine.begin() as connection:
        connection.execute(insert(OutboxRow.__table__), rows)
    config = parse_channels(
        {"webhooks": [{"name": "bench", "url": hook, "secret_env": SECRET_ENV}]}
    )
    senders = build_senders(config)
    started = time.perf_counter()
    result = dispatch(engine, config, senders, NOW)
    elapsed = time.perf_counter() - started
    assert result.delivered == len(rows), result.summary()
    engine.dispose()
    return elapsed


def run_floor(rows: list[dict], hook: str) -> float:
    client = httpx.Client(timeout=10)
    started = time.perf_counter()
    for i, row in enumerate(rows):
        message = OutboxMessage(i, row["idempotency_key"], row["kind"], row["customer_id"],
                                json.loads(row["payload"]), NOW, 1)  # fmt: skip
        body = canonical_json(webhook_document(message, MessageContext()))
        post_signed(client, hook, body, "secret", message)
    elapsed = time.perf_counter() - started
    client.close()
    return elapsed


def postgres_url() -> tuple[str, object] | None:
    base = os.environ.get("TIER_ML_TEST_POSTGRES_URL")
    if not base:
        return None
    url = make_url(base).set(drivername="postgresql+psycopg")
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    scoped = url.update_query_dict({"options": f"-csearch_path={schema}"})

    def drop() -> None:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    return scoped.render_as_string(hide_password=False), drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--customers", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    os.environ[SECRET_ENV] = "secret"
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{server.server_address[1]}/hook"
    rows = messages(args.messages, args.customers)

    floor = statistics.median(run_floor(rows, hook) for _ in range(args.runs))
    lines = [
        "## Notifications: outbox delivery",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared), Python "
        f"{platform.python_version()}. {args.messages:,} messages over {args.customers:,} customers "
        f"({args.messages // args.customers} each, delivered in order), one signed webhook on a "
        f"local threaded http.server; median of {args.runs} runs. Floor: the same signed POSTs "
        "sent one after another with the same client, no store (the dispatcher sends up to "
        "delivery.concurrency = 4 at once, each to a different customer).",
        "",
        "| backend | seconds | messages/s | ratio to floor |",
        "|---|---:|---:|---:|",
        f"| floor (POSTs only) | {floor:.2f} | {args.messages / floor:,.0f} | 1.0 |",
    ]
    for backend in args.backends.split(","):
        times = []
        for _ in range(args.runs):
            if backend == "sqlite":
                with tempfile.TemporaryDirectory() as folder:
                    times.append(run_dispatch(f"sqlite:///{folder}/bench.sqlite", rows, hook))
            else:
                found = postgres_url()
                if found is None:
                    break
                url, drop = found
                try:
                    times.append(run_dispatch(url, rows, hook))
                finally:
                    drop()  # type: ignore[operator]
        if times:
            seconds = statistics.median(times)
            lines.append(
                f"| {backend} | {seconds:.2f} | {args.messages / seconds:,.0f} | {seconds / floor:.1f} |"
            )
    server.shutdown()
    section = "\n".join(lines) + "\n"
    print(section)
    out = Path(__file__).resolve().parents[1] / "docs" / "bench" / "notify.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(section, encoding="utf-8")


if __name__ == "__main__":
    main()
