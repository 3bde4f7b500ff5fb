"""Background jobs of the HTTP service (a reclassification), recorded in the store.

A job row is written ``queued`` when the request arrives; the worker that runs
it marks it ``running``, then ``succeeded`` with a JSON result or ``failed``
with an error. Any process can read a job by id, so clients poll
``GET /v1/jobs/{id}`` whichever worker answers. Jobs a process left
``queued``/``running`` when it died are marked failed at the next start-up
(:func:`fail_interrupted`).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Table, select, update

from tier_ml.store.models import JobRow
from tier_ml.store.unit_of_work import UnitOfWork, run_in_transaction

JOBS: Table = JobRow.__table__  # type: ignore[assignment]
QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    status: str
    params: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    actor: str
    created_at_us: int
    started_at_us: int | None
    finished_at_us: int | None


def _job(row: Any) -> Job:
    return Job(
        row.id,
        row.kind,
        row.status,
        json.loads(row.params),
        None if row.result is None else json.loads(row.result),
        row.error,
        row.actor,
        row.created_at_us,
        row.started_at_us,
        row.finished_at_us,
    )


def create_job(engine: Engine, kind: str, params: dict[str, Any], actor: str, now_us: int) -> Job:
    job_id = uuid.uuid4().hex
    values = {
        "id": job_id,
        "kind": kind,
        "status": QUEUED,
        "params": json.dumps(params, sort_keys=True),
        "actor": actor,
        "created_at_us": now_us,
    }
    run_in_transaction(
        engine, lambda uow: uow.repo.connection.execute(JOBS.insert().values(**values))
    )
    return Job(job_id, kind, QUEUED, params, None, None, actor, now_us, None, None)


def get_job(engine: Engine, job_id: str) -> Job | None:
    query = select(JOBS).where(JOBS.c.id == job_id)
    row = run_in_transaction(
        engine, lambda uow: uow.repo.connection.execute(query).first(), read_only=True
    )
    return None if row is None else _job(row)


def _set(engine: Engine, job_id: str, **values: Any) -> None:
    def work(uow: UnitOfWork) -> None:
        uow.repo.connection.execute(update(JOBS).where(JOBS.c.id == job_id).values(**values))

    run_in_transaction(engine, work)


def mark_running(engine: Engine, job_id: str, now_us: int) -> None:
    _set(engine, job_id, status=RUNNING, started_at_us=now_us)


def mark_succeeded(engine: Engine, job_id: str, result: dict[str, Any], now_us: int) -> None:
    _set(
        engine,
        job_id,
        status=SUCCEEDED,
        result=json.dumps(result, sort_keys=True),
        finished_at_us=now_us,
    )


def mark_failed(engine: Engine, job_id: str, error: str, now_us: int) -> None:
    _set(engine, job_id, status=FAILED, error=error, finished_at_us=now_us)


def fail_interrupted(engine: Engine, now_us: int) -> int:
    """Mark jobs left queued or running by a process that stopped as failed; how many."""
    statement = (
        update(JOBS)
        .where(JOBS.c.status.in_([QUEUED, RUNNING]))
        .values(
            status=FAILED,
            error="interrupted: the service stopped before the job finished",
            finished_at_us=now_us,
        )
    )
    return run_in_transaction(engine, lambda uow: uow.repo.connection.execute(statement).rowcount)
