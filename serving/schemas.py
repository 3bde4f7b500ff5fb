"""Request and response models of the HTTP API (separate from the domain's classes).

Money is in the policy's base currency, rounded to cents; instants are ISO 8601
UTC strings ending in ``Z``, as the ``classify`` command writes them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ID = Field(default=None, max_length=256)
EXAMPLE_EVENT = {
    "event_id": "e-1001",
    "event_type": "placed",
    "order_id": "o-77",
    "customer_id": "C00042",
    "occurred_at": "2025-06-01T10:15:00Z",
    "amount": "129.90",
    "currency": "EUR",
    "channel": "web",
    "region": "EU",
}


class EventIn(BaseModel):
    """One canonical order event (TIER_RULES.md). Fields are checked by the store: a bad
    value rejects the event with a reason, it does not fail the request."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE_EVENT]})

    event_id: str | None = ID
    event_type: str | None = Field(
        default=None, max_length=32, description="placed, refunded or cancelled"
    )
    order_id: str | None = ID
    customer_id: str | None = ID
    occurred_at: str | None = Field(
        default=None, max_length=64, description="ISO 8601; no offset means UTC"
    )
    amount: str | float | None = Field(
        default=None, description="Positive decimal (ignored for cancels)"
    )
    currency: str | None = Field(default=None, max_length=8)
    channel: str | None = Field(default=None, max_length=64)
    region: str | None = Field(default=None, max_length=64)


class EventBatch(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"events": [EXAMPLE_EVENT]}]}
    )

    events: list[EventIn]


class EventResultOut(BaseModel):
    position: int = Field(description="Index of the event in the request")
    event_id: str | None
    customer_id: str | None
    status: Literal["accepted", "duplicate", "rejected"]
    reason: str | None = Field(description="Reject reason code (rejected only)")
    detail: str | None
    tier: str | None = Field(description="The customer's tier after the batch")


class EventsOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "policy_version": 1,
                    "counts": {"accepted": 1, "duplicate": 0, "rejected": 0},
                    "customers": 1,
                    "tier_changes": 1,
                    "results": [
                        {
                            "position": 0,
                            "event_id": "e-1001",
                            "customer_id": "C00042",
                            "status": "accepted",
                            "reason": None,
                            "detail": None,
                            "tier": "Silver",
                        }
                    ],
                }
            ]
        }
    )

    policy_version: int
    counts: dict[str, int]
    customers: int = Field(description="Customers re-evaluated")
    tier_changes: int
    results: list[EventResultOut]


class PendingOrderOut(BaseModel):
    order_id: str
    placed_at: str
    amount: float = Field(description="What will count once it matures (net of refunds so far)")
    matures_at: str


class OverrideOut(BaseModel):
    tier: str
    reason: str
    actor: str
    set_at: str
    until: str | None


class HistoryOut(BaseModel):
    at: str = Field(description="When the change took effect")
    recorded_at: str
    old_tier: str | None
    new_tier: str | None
    reason: str
    cause: str | None
    actor: str
    note: str | None
    policy_version: int


class CustomerPredictionsOut(BaseModel):
    """The chances shown with a customer (``GET /v1/customers/{id}?include=predictions``)."""

    churn_probability: float = Field(description="Chance of no order within the churn horizon")
    churn_probability_low: float | None = Field(
        default=None, description="Lower end of the churn probability's interval, when given"
    )
    churn_probability_high: float | None = Field(
        default=None, description="Upper end of the churn probability's interval, when given"
    )
    p_keep_tier: float = Field(
        description="Chance of still being at least in the current (rules) tier at the end of "
        "the tier-change model's horizon: 1 - p_downgrade"
    )
    p_reach_next_tier: float = Field(
        description="Chance of reaching a higher tier within the horizon: p_upgrade"
    )
    p_upgrade: float
    p_downgrade: float
    p_same: float
    model_versions: dict[str, str | None]


CUSTOMER_PREDICTIONS_EXAMPLE = {
    "churn_probability": 0.31,
    "p_keep_tier": 0.78,
    "p_reach_next_tier": 0.08,
    "p_upgrade": 0.08,
    "p_downgrade": 0.22,
    "p_same": 0.70,
    "model_versions": {"churn": "3", "tier_change": "2"},
}


class CustomerOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "customer_id": "C00042",
                    "as_of": "2025-12-31T00:00:00Z",
                    "tier": "Gold",
                    "tier_since": "2025-03-02T08:00:00Z",
                    "rules_tier": "Gold",
                    "eligible_tier": "Gold",
                    "region": "EU",
                    "currency": "USD",
                    "qualifying_spend": 21450.0,
                    "qualifying_orders": 31,
                    "pending_spend": 142.89,
                    "pending_matures_at": "2026-01-12T10:15:00Z",
                    "pending_orders": [
                        {
                            "order_id": "o-77",
                            "placed_at": "2025-12-29T10:15:00Z",
                            "amount": 142.89,
                            "matures_at": "2026-01-12T10:15:00Z",
                        }
                    ],
                    "next_tier": "VIP",
                    "spend_to_next_tier": 23550.0,
                    "perks": {"discount_rate": 0.05, "free_shipping": True},
                    "last_order_at": "2025-12-29T10:15:00Z",
                    "grace_ends_at": None,
                    "next_change_at": "2026-01-12T10:15:00Z",
                    "tier_changes": 1,
                    "override": None,
                    "policy_version": 1,
                    "history": [],
                }
            ]
        }
    )

    customer_id: str
    as_of: str
    tier: str
    tier_since: str | None
    rules_tier: str | None = Field(
        description="What the rules alone say (differs under an override)"
    )
    eligible_tier: str | None = Field(
        description="What spend alone gives (no downgrade protection)"
    )
    region: str | None
    currency: str
    qualifying_spend: float
    qualifying_orders: int
    pending_spend: float
    pending_matures_at: str | None = Field(description="When the next pending order matures")
    pending_orders: list[PendingOrderOut]
    next_tier: str | None
    spend_to_next_tier: float | None
    perks: dict[str, Any]
    last_order_at: str | None
    grace_ends_at: str | None
    next_change_at: str | None
    tier_changes: int
    override: OverrideOut | None
    policy_version: int
    history: list[HistoryOut]
    predictions: CustomerPredictionsOut | None = Field(
        default=None,
        description="Only with `?include=predictions`: the customer's chances as of now "
        "(null when no model is loaded; see predictions_unavailable)",
    )
    predictions_unavailable: str | None = Field(
        default=None,
        description="Only with `?include=predictions` when it could not be answered: why",
    )


_CUSTOMER_EXAMPLE: dict[str, Any] = CustomerOut.model_config["json_schema_extra"]["examples"][0]  # type: ignore[index]
#: OpenAPI examples of the lookup's 200 response, without and with ``?include=predictions``.
CUSTOMER_EXAMPLES = {
    "lookup": {"summary": "GET /v1/customers/C00042", "value": _CUSTOMER_EXAMPLE},
    "with_predictions": {
        "summary": "GET /v1/customers/C00042?include=predictions",
        "value": {**_CUSTOMER_EXAMPLE, "predictions": CUSTOMER_PREDICTIONS_EXAMPLE},
    },
}


class OverrideIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "tier": "VIP",
                    "reason": "complaint goodwill, ticket 4411",
                    "until": "2026-03-31T00:00:00Z",
                }
            ]
        },
    )

    tier: str = Field(min_length=1, max_length=64)
    reason: str = Field(min_length=1, max_length=2_000, description="Why (kept in the audit log)")
    until: str | None = Field(
        default=None, max_length=64, description="ISO 8601; open-ended when absent"
    )


class Reason(BaseModel):
    feature: str
    value: Any = None
    contribution: float


class PredictionOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "customer_id": "C00042",
                    "as_of": "2025-12-31T00:00:00Z",
                    "tier": "Gold",
                    "churn_probability": 0.31,
                    "churn_probability_low": 0.24,
                    "churn_probability_high": 0.39,
                    "p_upgrade": 0.08,
                    "p_downgrade": 0.22,
                    "p_same": 0.70,
                    "churn_reasons": [
                        {"feature": "days_since_last_order", "value": 64, "contribution": 0.41}
                    ],
                    "tier_change_reasons": [],
                    "model_versions": {"churn": "3", "tier_change": "2"},
                    "model_kinds": {"churn": "lightgbm", "tier_change": "lightgbm"},
                }
            ]
        }
    )

    customer_id: str
    as_of: str
    tier: str | None
    churn_probability: float
    churn_probability_low: float | None = Field(
        default=None,
        description="Lower end of the churn probability's 90 % interval (LightGBM: bootstrap of "
        "the calibration; small-shop BTYD model: posterior of its parameters); null when the "
        "model gives none",
    )
    churn_probability_high: float | None = Field(
        default=None, description="Upper end of the churn probability's 90 % interval"
    )
    p_upgrade: float
    p_downgrade: float
    p_same: float
    p_keep_tier: float = Field(
        description="Chance the customer is still at least in their current tier at the end of "
        "the tier-change model's horizon (the horizon it was trained with): 1 - p_downgrade"
    )
    p_reach_next_tier: float = Field(
        description="Chance the customer reaches a higher tier within the tier-change model's "
        "horizon: p_upgrade"
    )
    p_keep_tier_low: float | None = Field(
        default=None, description="90 % interval of p_keep_tier, when the model gives one"
    )
    p_keep_tier_high: float | None = None
    p_reach_next_tier_low: float | None = Field(
        default=None, description="90 % interval of p_reach_next_tier, when the model gives one"
    )
    p_reach_next_tier_high: float | None = None
    churn_reasons: list[Reason] = Field(default_factory=list)
    tier_change_reasons: list[Reason] = Field(default_factory=list)
    model_versions: dict[str, str | None]
    model_kinds: dict[str, str | None] = Field(
        default_factory=dict,
        description="Per model: lightgbm, or btyd_fallback when the shop was too small for "
        "LightGBM (small-shop mode: BG/NBD, see docs/training.md)",
    )


class PredictionsIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"customer_ids": ["C00042", "C00043"], "top_reasons": 0}]},
    )

    customer_ids: list[str] = Field(
        min_length=1, description="At most TIER_ML_MAX_PREDICTION_IDS ids"
    )
    top_reasons: int = Field(
        default=0, ge=0, le=20, description="SHAP reasons per customer (slower)"
    )

    @field_validator("customer_ids")
    @classmethod
    def _ids_are_text(cls, ids: list[str]) -> list[str]:
        """An unpaired surrogate (``"\\ud800"`` in JSON) is no text a store can look up: 422, not 500."""
        for index, value in enumerate(ids):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"id {index} holds an unpaired surrogate, which is not text") from None
        return ids


class PredictionsOut(BaseModel):
    as_of: str
    model_versions: dict[str, str | None]
    model_kinds: dict[str, str | None] = Field(default_factory=dict)
    predictions: list[PredictionOut]
    missing: list[str] = Field(description="Ids without any order in the store")


class TierRowOut(BaseModel):
    """A customer's tier as the ``classify`` columns."""

    customer_id: str
    tier: str
    qualifying_spend: float
    pending_spend: float
    eligible_tier: str | None
    tier_since: str | None
    qualifying_orders: int
    next_tier: str | None
    spend_to_next_tier: float | None
    region: str | None
    last_order_at: str | None
    grace_ends_at: str | None
    next_change_at: str | None
    tier_changes: int


class SegmentPage(BaseModel):
    tier: str
    as_of: str
    items: list[TierRowOut]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null at the end"
    )


class AtRiskOut(BaseModel):
    customer_id: str
    churn_probability: float
    churn_probability_low: float | None = Field(
        default=None, description="Lower end of the churn probability's 90 % interval"
    )
    churn_probability_high: float | None = Field(
        default=None, description="Upper end of the churn probability's 90 % interval"
    )
    p_keep_tier: float = Field(description="1 - p_downgrade within the tier-change horizon")
    p_reach_next_tier: float = Field(description="p_upgrade within the tier-change horizon")
    qualifying_spend: float
    spend_to_next_tier: float | None
    last_order_at: str | None
    grace_ends_at: str | None
    region: str | None


class AtRiskPage(BaseModel):
    tier: str
    as_of: str
    min_probability: float
    total: int = Field(description="Customers at or above min_probability")
    model_versions: dict[str, str | None]
    model_kinds: dict[str, str | None] = Field(
        default_factory=dict, description="Per model: lightgbm or btyd_fallback (small shop)"
    )
    items: list[AtRiskOut]
    next_cursor: str | None


class PriorityOut(TierRowOut):
    position: int


class PriorityPage(BaseModel):
    as_of: str
    items: list[PriorityOut]
    missing: list[str] = Field(
        default_factory=list, description="Requested ids unknown to the store"
    )


class PolicyVersionOut(BaseModel):
    version: int
    fingerprint: str
    actor: str
    created_at: str


class PolicyOut(BaseModel):
    version: int | None = Field(description="Null until the store has its first events")
    fingerprint: str
    policy: dict[str, Any]
    versions: list[PolicyVersionOut]


class PolicyChangeIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "policy": {
                        "base_currency": "USD",
                        "buffer_days": 14,
                        "tiers": [
                            {"name": "Silver"},
                            {"name": "Gold", "min_spend": 18000},
                            {"name": "VIP", "min_spend": 50000},
                        ],
                    },
                    "dry_run": True,
                }
            ]
        },
    )

    policy: dict[str, Any] | None = Field(default=None, description="The policy as a JSON object")
    policy_yaml: str | None = Field(default=None, max_length=200_000, description="Or as YAML text")
    dry_run: bool = Field(default=True, description="true: only the diff and the transitions")


class FieldChange(BaseModel):
    path: str
    old: Any = None
    new: Any = None


class TransitionCount(BaseModel):
    old_tier: str
    new_tier: str
    customers: int


class PolicyPlanOut(BaseModel):
    dry_run: bool
    current_version: int | None
    version: int | None = Field(description="The new version (null for a dry run)")
    customers: int
    changed: int = Field(description="Customers whose tier changes")
    changes: list[FieldChange] = Field(description="Policy fields that differ")
    transitions: list[TransitionCount]


class ReclassifyIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{}, {"policy_yaml": "..."}]}
    )

    policy: dict[str, Any] | None = Field(
        default=None,
        description="Apply this policy to everyone; absent: bring every due customer up to now",
    )
    policy_yaml: str | None = Field(default=None, max_length=200_000)


class JobOut(BaseModel):
    id: str
    kind: str
    status: Literal["queued", "running", "succeeded", "failed"]
    params: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    actor: str
    created_at: str
    started_at: str | None
    finished_at: str | None


class ModelInfo(BaseModel):
    name: str
    alias: str
    version: str | None
    run_id: str | None
    error: str | None


class ModelsOut(BaseModel):
    ready: bool
    models: dict[str, ModelInfo]


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    store: str
    models: dict[str, str | None]
    problems: list[str]
    auth: str
