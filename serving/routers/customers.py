"""Customers: the tier view for CRM and the customer portal, and manual overrides (admin).

Overrides and their removal are audited with the API key's name as the actor and
the reason given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from serving.customer_paths import CUSTOMER, CustomerId
from serving.deps import Admin, NowDep, Services, ServicesDep, TiersReader, run_scoring
from serving.errors import Problem, customer_not_found, problem_responses
from serving.lookup import read_customer
from serving.models import CHURN, TIER_CHANGE, ModelSet, prediction_fields
from serving.schemas import CUSTOMER_EXAMPLES, CustomerOut, OverrideIn
from serving.scoring import customer_features, score
from tier_ml.events import parse_instant
from tier_ml.money import micros_to_money
from tier_ml.store.explain import customer_ledger
from tier_ml.store.service import (
    StoreError,
    StoreInputError,
    clear_override,
    iso_instant,
    policy_tier,
    set_override,
)
from tier_ml.store.views import CustomerView

router = APIRouter(tags=["customers"])
T = TypeVar("T")
PREDICTIONS_SCOPE = "predictions:read"
INTERVAL_COLUMNS = ("churn_probability_low", "churn_probability_high")


def _iso(micros: int | None) -> str | None:
    return None if micros is None else iso_instant(micros)


def _none(value: Any) -> Any:
    return None if value is None or value != value else value


def _money(value: Any) -> float | None:
    value = _none(value)
    return None if value is None else float(value)


def customer_body(view: CustomerView, now_us: int) -> dict[str, Any]:
    """The :class:`CustomerOut` document as plain JSON values.

    The lookup answers with this dict serialised directly: building and then
    re-validating the pydantic model cost about as much as the store read. Tests
    check it equals ``CustomerOut.model_validate(body).model_dump(mode="json")``.
    """
    state, policy, row = view.state, view.policy, view.tier_row
    tier = (
        policy.tiers[policy.tier_names.index(state.tier)]
        if state.tier in policy.tier_names
        else None
    )
    override = view.override
    pending = sorted(view.pending_orders, key=lambda p: (p.matures_at_us, p.order_id))
    return {
        "customer_id": state.customer_id,
        "as_of": iso_instant(max(now_us, state.evaluated_at_us)),
        "tier": state.tier or "",
        "tier_since": _iso(state.tier_since_us),
        "rules_tier": state.rules_tier,
        "eligible_tier": state.eligible_tier,
        "region": state.region,
        "currency": policy.base_currency,
        "qualifying_spend": micros_to_money(state.qualifying_us),
        "qualifying_orders": int(state.qualifying_orders),
        "pending_spend": micros_to_money(state.pending_us),
        "pending_matures_at": _iso(pending[0].matures_at_us) if pending else None,
        "pending_orders": [
            {
                "order_id": p.order_id,
                "placed_at": iso_instant(p.placed_at_us),
                "amount": micros_to_money(p.pending_us),
                "matures_at": iso_instant(p.matures_at_us),
            }
            for p in pending
        ],
        "next_tier": _none(row.get("next_tier")),
        "spend_to_next_tier": _money(row.get("spend_to_next_tier")),
        "perks": dict(tier.perks) if tier is not None else {},
        "last_order_at": _iso(state.last_order_at_us),
        "grace_ends_at": _iso(state.grace_ends_at_us),
        "next_change_at": _iso(state.next_change_at_us),
        "tier_changes": int(state.tier_changes),
        "override": None
        if override is None
        else {
            "tier": override.tier,
            "reason": override.reason,
            "actor": override.actor,
            "set_at": iso_instant(override.set_at_us),
            "until": _iso(override.until_us),
        },
        "policy_version": int(view.policy_version),
        "history": [
            {
                "at": iso_instant(h["at_us"]),
                "recorded_at": iso_instant(h["recorded_at_us"]),
                "old_tier": h["old_tier"],
                "new_tier": h["new_tier"],
                "reason": h["reason"],
                "cause": h["cause"],
                "actor": h["actor"],
                "note": h["note"],
                "policy_version": int(h["policy_version"]),
            }
            for h in view.history
        ],
    }


def customer_out(view: CustomerView, now_us: int) -> CustomerOut:
    return CustomerOut.model_validate(customer_body(view, now_us))


def load_customer(services: Services, customer_id: str, now_us: int) -> CustomerView:
    view = read_customer(services.engine, customer_id, now_us)
    if view is None:
        raise customer_not_found(customer_id)
    return view


async def _read(services: Services, work: Callable[[], T]) -> T:
    """Run a store read: inline on SQLite when a pooled connection is free (an in-process
    read of well under a millisecond, cheaper than the hop to the thread pool); on the
    thread pool for a server database (a network round trip must not hold up the event
    loop) or when every pooled connection is busy (waiting for one must not either)."""
    engine = services.engine
    checked_in = getattr(engine.pool, "checkedin", None)
    if engine.dialect.name == "sqlite" and checked_in is not None and checked_in() > 0:
        return work()
    return await run_in_threadpool(work)


def _predictions_block(
    services: Services, models: ModelSet, view: CustomerView, now_us: int
) -> dict[str, Any]:
    """``predictions`` (or why there are none) for ``?include=predictions``."""
    if not models.ready:
        return {"predictions": None, "predictions_unavailable": models.unavailable_reason()}
    customer_id = view.state.customer_id
    features = customer_features(services.engine, customer_id, view.policy, now_us)
    if features is None or len(features) == 0:
        return {
            "predictions": None,
            "predictions_unavailable": f"customer {customer_id!r} has no placed order to score",
        }
    row = score(models, features, 0).iloc[0].to_dict()
    fields = {
        name: value
        for name, value in prediction_fields(row).items()
        if name not in ("churn_reasons", "tier_change_reasons")
    }
    for name in INTERVAL_COLUMNS:  # when the churn model gives an interval
        if name not in fields and _none(row.get(name)) is not None:
            fields[name] = float(row[name])
    services.metrics.predictions.labels(CHURN).inc()
    services.metrics.predictions.labels(TIER_CHANGE).inc()
    return {"predictions": {**fields, "model_versions": models.versions()}}


def _refused(exc: StoreError, location: str) -> Problem:
    """The store's refusal: 422 on the input it names (``until``, ``tier``, ``reason``...),
    else 409, a conflict with the store's state (no override to remove, an instant before
    the store's clock)."""
    message = str(exc)
    if isinstance(exc, StoreInputError):
        where = "path" if exc.field == "customer_id" else location
        return Problem(422, message, field=exc.field, location=where)
    return Problem(409, message)


def _require_reason(reason: str, location: str) -> None:
    """Overrides are audited: a blank reason is a 422 on the ``reason`` field."""
    if not reason.strip():
        raise Problem(
            422,
            "a reason is required (it is kept in the audit log)",
            field="reason",
            location=location,
        )


INCLUDE_DESCRIPTION = (
    "`predictions`: also the customer's chances from the loaded models, computed as of now "
    "(`churn_probability`, `p_keep_tier`, `p_reach_next_tier`, `p_upgrade`, `p_downgrade`, "
    "`p_same`, model versions; reasons are at `/v1/customers/{id}/predictions`). Needs the "
    "`predictions:read` scope too, and costs a few milliseconds; without it the lookup stays "
    "a store read. When no model is loaded the customer is still returned, with "
    "`predictions: null` and `predictions_unavailable` saying why."
)


@router.get(
    f"/v1/customers/{CUSTOMER}",
    response_model=CustomerOut,
    summary="A customer's tier, spend, pending spend and when it matures, perks and tier history",
    description=(
        "The tier view for CRM and the customer portal. Add `?include=predictions` for the "
        "customer's chances of keeping their tier, reaching the next one and churning."
    ),
    responses={
        **problem_responses(401, 403, 404, 422),
        200: {
            "description": "The customer (with `?include=predictions`: and their chances)",
            "content": {"application/json": {"examples": CUSTOMER_EXAMPLES}},
        },
    },
)
async def get_customer(
    customer_id: CustomerId,
    principal: TiersReader,
    services: ServicesDep,
    now_us: NowDep,
    include: Annotated[
        Literal["predictions"] | None,
        Query(description=INCLUDE_DESCRIPTION, examples=["predictions"]),
    ] = None,
) -> Response:
    # A handler of its own rather than FastAPI's model round trip: the body is built as
    # plain JSON values once (tests prove it matches CustomerOut) and the SQLite read
    # runs inline, so a lookup costs the store read plus a little framework.
    if include == "predictions" and PREDICTIONS_SCOPE not in principal.scopes:
        raise Problem(
            403,
            f"include=predictions needs the scope {PREDICTIONS_SCOPE!r}; the key "
            f"{principal.name!r} has: {', '.join(sorted(principal.scopes)) or 'none'}",
            field="include",
            location="query",
        )
    view = await _read(services, lambda: load_customer(services, customer_id, now_us))
    body = customer_body(view, now_us)
    if include == "predictions":
        models = services.models.current
        body.update(await run_scoring(services, lambda: _predictions_block(services, models, view, now_us)))
    return JSONResponse(body)


@router.get(
    f"/v1/customers/{CUSTOMER}/ledger",
    summary="Why a customer has their tier: orders, buffer clearings, refunds, transitions, targets",
    description=(
        "The explained tier ledger, computed by the rules engine itself (it cannot disagree "
        "with the tier): which orders count and when each cleared or will clear the buffer, "
        "what each refund or cancel removed, orders that left the window, every transition "
        "with the rule that caused it (and overrides, policy changes, grandfathering from the "
        "audit log), and the spend and dates to reach the next tier or keep this one."
    ),
    responses=problem_responses(401, 403, 404, 422),
)
def get_ledger(
    customer_id: CustomerId, principal: TiersReader, services: ServicesDep, now_us: NowDep
) -> dict[str, Any]:
    load_customer(services, customer_id, now_us)  # 404 for a customer the store does not know
    try:
        return customer_ledger(services.engine, customer_id, now_us).to_dict()
    except StoreError as exc:
        raise Problem(409, str(exc)) from None


@router.put(
    f"/v1/customers/{CUSTOMER}/override",
    response_model=CustomerOut,
    summary="Give a customer a tier whatever the rules say, until a time or until removed (admin)",
    responses=problem_responses(401, 403, 404, 409, 415, 422),
)
def put_override(
    customer_id: CustomerId,
    body: OverrideIn,
    principal: Admin,
    services: ServicesDep,
    now_us: NowDep,
) -> CustomerOut:
    before = load_customer(services, customer_id, now_us).state.tier
    try:
        tier = policy_tier(services.policy(), body.tier)  # any letter case: the policy's name
    except StoreInputError as exc:
        raise _refused(exc, "body") from None
    until_us = None
    if body.until is not None:
        until_us = parse_instant(body.until)
        if until_us is None:
            raise Problem(
                422, f"{body.until!r} is not an ISO 8601 time", field="until", location="body"
            )
    _require_reason(body.reason, "body")
    try:
        set_override(services.engine, customer_id, tier, principal.name, body.reason, now_us, until_us)
    except StoreError as exc:
        raise _refused(exc, "body") from None
    after = load_customer(services, customer_id, now_us)
    if after.state.tier != before:
        services.metrics.tier_changes.inc()
    return customer_out(after, now_us)


@router.delete(
    f"/v1/customers/{CUSTOMER}/override",
    response_model=CustomerOut,
    summary="Remove a customer's override: the rules tier applies again (admin)",
    responses=problem_responses(401, 403, 404, 409, 422),
)
def delete_override(
    customer_id: CustomerId,
    principal: Admin,
    services: ServicesDep,
    now_us: NowDep,
    reason: Annotated[
        str, Query(min_length=1, max_length=2_000, description="Why (kept in the audit log)")
    ],
) -> CustomerOut:
    before = load_customer(services, customer_id, now_us).state.tier
    _require_reason(reason, "query")
    try:
        clear_override(services.engine, customer_id, principal.name, reason, now_us)
    except StoreError as exc:
        raise _refused(exc, "query") from None
    after = load_customer(services, customer_id, now_us)
    if after.state.tier != before:
        services.metrics.tier_changes.inc()
    return customer_out(after, now_us)
