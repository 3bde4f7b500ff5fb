"""Runs background jobs (reclassification) one at a time on a worker thread.

The job's state lives in the store (``tier_ml.store.jobs``), so a client polls
``GET /v1/jobs/{id}`` from any process; this runner only executes. Store
errors a user can act on (an empty store, a policy whose tiers break an
override) end the job ``failed`` with that message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from sqlalchemy import Engine

from tier_ml.policy import Policy
from tier_ml.store import jobs as job_store
from tier_ml.store.service import StoreError, apply_policy, sweep

log = logging.getLogger("serving.jobs")
RECLASSIFY = "reclassify"


class JobRunner:
    def __init__(self, engine: Engine, clock: Callable[[], int]) -> None:
        self.engine = engine
        self.clock = clock  # the service's clock, for the job's started/finished times
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tier-ml-job")

    def submit_reclassify(
        self, job: job_store.Job, policy: Policy | None, source_text: str | None, now_us: int
    ) -> Future[None]:
        return self._executor.submit(self._reclassify, job, policy, source_text, now_us)

    def _reclassify(
        self, job: job_store.Job, policy: Policy | None, source_text: str | None, now_us: int
    ) -> None:
        job_store.mark_running(self.engine, job.id, self.clock())
        try:
            result: dict[str, Any]
            if policy is None:
                swept = sweep(self.engine, now_us)
                result = {
                    "mode": "sweep",
                    "customers": swept.customers,
                    "tier_changes": swept.transitions,
                }
            else:
                applied = apply_policy(
                    self.engine, policy, job.actor, now_us, source_text=source_text
                )
                result = {
                    "mode": "policy",
                    "version": applied.version,
                    "customers": applied.customers,
                    "changed": applied.changed,
                    "tier_changes": len(applied.transitions),
                }
        except StoreError as exc:
            job_store.mark_failed(self.engine, job.id, str(exc), self.clock())
            return
        except Exception as exc:
            log.exception("job %s failed", job.id)
            job_store.mark_failed(
                self.engine, job.id, f"internal error: {type(exc).__name__}: {exc}", self.clock()
            )
            return
        job_store.mark_succeeded(self.engine, job.id, result, self.clock())

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
