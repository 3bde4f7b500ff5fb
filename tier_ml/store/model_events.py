"""Events about the models (not about one customer) written to the outbox, e.g. ``drift_detected``.

Why the outbox: the people who own the models subscribe a webhook (or email) to
these kinds exactly like to tier changes, and delivery gets the same guarantees
(at least once, idempotency key, dead letters). The outbox is keyed by customer;
a model event uses the subject ``model:<registered model name>`` in that column,
so its messages stay in order among themselves and never wait behind a customer's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Engine, insert, select

from tier_ml.store.models import OutboxRow
from tier_ml.store.service import iso_instant
from tier_ml.store.unit_of_work import UnitOfWork, run_in_transaction

DRIFT_DETECTED = "drift_detected"
MODEL_SUBJECT_PREFIX = "model:"


def model_subject(model_name: str) -> str:
    """The outbox ``customer_id`` of an event about a model."""
    return f"{MODEL_SUBJECT_PREFIX}{model_name}"


def record_model_event(
    engine: Engine,
    kind: str,
    model_name: str,
    payload: Mapping[str, Any],
    idempotency_key: str,
    now_us: int,
) -> int:
    """Queue one model event; returns its outbox id. The same key twice queues it once
    (a re-run of the same monitoring report does not notify again)."""
    if not kind or not model_name or not idempotency_key:
        raise ValueError("a model event needs a kind, a model name and an idempotency key")
    table = OutboxRow.__table__
    subject = model_subject(model_name)
    document = {
        **payload,
        "kind": kind,
        "model": model_name,
        "at": iso_instant(now_us),
        "idempotency_key": idempotency_key,
    }

    def work(uow: UnitOfWork) -> int:
        connection = uow.repo.connection
        existing = connection.execute(
            select(table.c.id).where(table.c.idempotency_key == idempotency_key)
        ).scalar_one_or_none()
        if existing is not None:
            return int(existing)
        return int(
            connection.execute(
                insert(table)
                .values(
                    idempotency_key=idempotency_key,
                    kind=kind,
                    customer_id=subject,
                    payload=json.dumps(document, sort_keys=True, default=str),
                    created_at_us=now_us,
                )
                .returning(table.c.id)
            ).scalar_one()
        )

    return run_in_transaction(engine, work)
