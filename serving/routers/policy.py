"""The tier policy: read it, preview a change (the field diff and how many customers move
between which tiers), apply it (admin; audited with the key's name), or apply it as a
background reclassification job to poll."""

from __future__ import annotations

from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse

from serving.deps import Admin, NowDep, ServicesDep, TiersReader
from serving.errors import Problem, problem_responses
from serving.nul_guard import nul_path
from serving.schemas import (
    FieldChange,
    JobOut,
    PolicyChangeIn,
    PolicyOut,
    PolicyPlanOut,
    PolicyVersionOut,
    ReclassifyIn,
    TransitionCount,
)
from tier_ml.policy import Policy, PolicyError, parse_policy
from tier_ml.store import jobs as job_store
from tier_ml.store.service import StoreError, apply_policy, iso_instant, policy_versions

router = APIRouter(tags=["policy and jobs"])


class AliasRefused(yaml.YAMLError):
    """A YAML alias (``*name``) in a policy sent over HTTP."""


class NoAliasLoader(yaml.SafeLoader):
    """``SafeLoader`` that refuses aliases: through them (and ``<<`` merge keys) a few hundred
    bytes expand to billions of values inside ``safe_load`` itself, before any check of
    the result could run. Policies have no use for them."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            line = event.start_mark.line + 1 if event.start_mark else "?"
            raise AliasRefused(
                f"policy_yaml uses the alias *{event.anchor} (line {line}); YAML aliases are "
                "not accepted here: write the values out"
            )
        return super().compose_node(parent, index)


@router.get(
    "/v1/policy",
    response_model=PolicyOut,
    summary="The active policy and every stored version",
    responses=problem_responses(401, 403),
)
def get_policy(principal: TiersReader, services: ServicesDep) -> PolicyOut:
    versions, active = policy_versions(services.engine)
    policy = active.policy if active is not None else services.policy()
    return PolicyOut(
        version=None if active is None else active.version,
        fingerprint=policy.fingerprint,
        policy=policy.model_dump(mode="json"),
        versions=[
            PolicyVersionOut(
                version=v["version"],
                fingerprint=v["fingerprint"],
                actor=v["actor"],
                created_at=iso_instant(v["created_at_us"]),
            )
            for v in versions
        ],
    )


def parse_policy_input(
    policy: dict[str, Any] | None, policy_yaml: str | None
) -> tuple[Policy, str | None]:
    """The policy of a request (JSON object or YAML text) and its source text, or 422."""
    if (policy is None) == (policy_yaml is None):
        raise Problem(
            422,
            "give exactly one of policy (a JSON object) or policy_yaml",
            field="policy",
            location="body",
        )
    field = "policy" if policy is not None else "policy_yaml"
    data: Any = policy
    if policy_yaml is not None:
        try:
            data = yaml.load(policy_yaml, Loader=NoAliasLoader)  # a SafeLoader
        except AliasRefused as exc:
            raise Problem(422, str(exc), field=field, location="body") from None
        except yaml.YAMLError as exc:
            raise Problem(
                422, f"policy_yaml is not valid YAML: {exc}", field=field, location="body"
            ) from None
    if policy_yaml is not None and (where := nul_path(data)) is not None:  # YAML's "\0"
        raise Problem(
            422,
            f"{where} contains a NUL character, which the store cannot keep",
            field=field,
            location="body",
        )
    try:
        return parse_policy(data, source="request"), policy_yaml
    except PolicyError as exc:
        raise Problem(422, str(exc), field=field, location="body") from None


def field_changes(old: Any, new: Any, path: str = "") -> list[FieldChange]:
    """The leaves that differ between two policy documents (``tiers.1.min_spend``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        changes = []
        for key in sorted(set(old) | set(new), key=str):
            where = f"{path}.{key}" if path else str(key)
            changes.extend(field_changes(old.get(key), new.get(key), where))
        return changes
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        changes = []
        for index, (a, b) in enumerate(zip(old, new, strict=True)):
            changes.extend(field_changes(a, b, f"{path}.{index}"))
        return changes
    return [] if old == new else [FieldChange(path=path or "(policy)", old=old, new=new)]


@router.post(
    "/v1/policy",
    response_model=PolicyPlanOut,
    summary="Preview (dry_run, the default) or apply a new policy to every customer (admin)",
    responses=problem_responses(401, 403, 409, 413, 415, 422),
)
def post_policy(
    body: PolicyChangeIn, principal: Admin, services: ServicesDep, now_us: NowDep
) -> PolicyPlanOut:
    policy, source = parse_policy_input(body.policy, body.policy_yaml)
    _, active = policy_versions(services.engine)
    current = active.policy if active is not None else services.policy()
    try:
        result = apply_policy(
            services.engine,
            policy,
            principal.name,
            now_us,
            dry_run=body.dry_run,
            source_text=source,
        )
    except StoreError as exc:
        raise Problem(409, str(exc)) from None
    if not body.dry_run and result.transitions:
        services.metrics.tier_changes.inc(len(result.transitions))
    matrix = result.matrix
    transitions = [
        TransitionCount(old_tier=str(old), new_tier=str(new), customers=int(matrix.loc[old, new]))
        for old in matrix.index
        for new in matrix.columns
        if int(matrix.loc[old, new]) > 0
    ]
    return PolicyPlanOut(
        dry_run=body.dry_run,
        current_version=None if active is None else active.version,
        version=result.version,
        customers=result.customers,
        changed=result.changed,
        changes=field_changes(current.model_dump(mode="json"), policy.model_dump(mode="json")),
        transitions=transitions,
    )


def job_out(job: job_store.Job) -> JobOut:
    return JobOut(
        id=job.id,
        kind=job.kind,
        status=job.status,  # type: ignore[arg-type]
        params=job.params,
        result=job.result,
        error=job.error,
        actor=job.actor,
        created_at=iso_instant(job.created_at_us),
        started_at=None if job.started_at_us is None else iso_instant(job.started_at_us),
        finished_at=None if job.finished_at_us is None else iso_instant(job.finished_at_us),
    )


@router.post(
    "/v1/jobs/reclassify",
    response_model=JobOut,
    status_code=202,
    summary="Start a reclassification (bring everyone up to now, or apply a policy); poll the job (admin)",
    responses=problem_responses(401, 403, 413, 415, 422),
)
def post_reclassify(
    body: ReclassifyIn, principal: Admin, services: ServicesDep, now_us: NowDep
) -> JSONResponse:
    policy, source = (None, None)
    if body.policy is not None or body.policy_yaml is not None:
        policy, source = parse_policy_input(body.policy, body.policy_yaml)
    params = {
        "as_of": iso_instant(now_us),
        "policy_fingerprint": None if policy is None else policy.fingerprint,
    }
    job = job_store.create_job(
        services.engine, "reclassify", params, principal.name, services.now_us()
    )
    services.jobs.submit_reclassify(job, policy, source, now_us)
    return JSONResponse(
        job_out(job).model_dump(mode="json"),
        status_code=202,
        headers={"Location": f"/v1/jobs/{job.id}"},
    )


@router.get(
    "/v1/jobs/{job_id}",
    response_model=JobOut,
    summary="A job's status and result (admin)",
    responses=problem_responses(401, 403, 404, 422),
)
def get_job(
    job_id: Annotated[str, Path(min_length=1, max_length=64)],
    principal: Admin,
    services: ServicesDep,
) -> JobOut:
    job = job_store.get_job(services.engine, job_id)
    if job is None:
        raise Problem(404, f"no job {job_id!r}", field="job_id", location="path")
    return job_out(job)
