"""The tables of the tier store (SQLAlchemy 2 typed declarative models).

The store keeps the *ledger* (every accepted order event, raw as it came in),
the *derived* state (orders, customers, tier state) and the *trail* (overrides,
audit log, outbox, policy versions, rejected events). Money and time are kept
the way the rules engine wants them:

- the ledger stores the canonical fields as text (``occurred_at``, ``amount``
  and ``currency`` exactly as delivered), never money converted with one
  policy's fx rates, so a new policy version with other rates replays
  correctly; ``at_us`` (epoch microseconds) is stored beside it for ordering;
- tier state stores integers in engine units: micro-units of the base currency
  (``*_us`` money) and epoch microseconds (``*_at_us``), exact on SQLite and
  PostgreSQL alike.

The schema itself is created by the Alembic migrations in ``migrations/``;
these classes describe it for queries and must match the latest revision.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: An auto-incrementing 64-bit key (SQLite auto-increments only ``INTEGER PRIMARY KEY``).
Serial = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class PolicyVersion(Base):
    """Every policy the store has used; the highest version is the active one."""

    __tablename__ = "policy_versions"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    fingerprint: Mapped[str] = mapped_column(String())
    policy_json: Mapped[str] = mapped_column(Text, doc="The validated policy as JSON.")
    source_text: Mapped[str | None] = mapped_column(Text, doc="The YAML as applied, if any.")
    actor: Mapped[str] = mapped_column(String())
    created_at_us: Mapped[int] = mapped_column(BigInteger)
    grandfather_until_us: Mapped[int | None] = mapped_column(
        BigInteger, doc="Members kept their tier at least until then (NULL: not grandfathered)."
    )
    note: Mapped[str | None] = mapped_column(Text, doc="Why, as given when applied.")


class Customer(Base):
    """A customer the ledger has seen (the row PostgreSQL writers lock per customer)."""

    __tablename__ = "customers"

    customer_id: Mapped[str] = mapped_column(String(), primary_key=True)
    first_seen_at_us: Mapped[int] = mapped_column(BigInteger)


class OrderEventRow(Base):
    """One accepted canonical order event, raw fields as delivered (the ledger)."""

    __tablename__ = "order_events"
    __table_args__ = (Index(None, "customer_id", "id"),)  # a customer's events after a known id

    id: Mapped[int] = mapped_column(Serial, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(), unique=True)
    event_type: Mapped[str] = mapped_column(String())
    order_id: Mapped[str] = mapped_column(String())
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.customer_id"))
    occurred_at: Mapped[str] = mapped_column(String(), doc="As delivered (ISO 8601).")
    at_us: Mapped[int] = mapped_column(BigInteger, doc="occurred_at as epoch microseconds.")
    amount: Mapped[str | None] = mapped_column(String(), doc="As delivered, not converted.")
    currency: Mapped[str | None] = mapped_column(String())
    channel: Mapped[str | None] = mapped_column(String())
    region: Mapped[str | None] = mapped_column(String())
    received_at_us: Mapped[int] = mapped_column(BigInteger, doc="The store clock at ingest.")


class OrderRow(Base):
    """One placed order: which customer placed it, when, by which event."""

    __tablename__ = "orders"

    order_id: Mapped[str] = mapped_column(String(), primary_key=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.customer_id"), index=True)
    placed_event_id: Mapped[str] = mapped_column(String())
    placed_at_us: Mapped[int] = mapped_column(BigInteger)


class TierStateRow(Base):
    """A customer's current tier and the numbers behind it, as of ``evaluated_at_us``.

    ``tier`` is the effective tier (an active override, else the rules tier);
    ``tier`` is NULL while the customer has no order at or before the
    evaluation instant. ``next_due_at_us`` is the next instant at which the
    state may change without a new event (a maturity, a window exit, a grace
    end, an override expiry, an event dated in the future): the sweep's index.
    """

    __tablename__ = "tier_state"

    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.customer_id"), primary_key=True)
    tier: Mapped[str | None] = mapped_column(String())
    rules_tier: Mapped[str | None] = mapped_column(String())
    eligible_tier: Mapped[str | None] = mapped_column(String())
    tier_since_us: Mapped[int | None] = mapped_column(BigInteger)
    qualifying_us: Mapped[int] = mapped_column(BigInteger, default=0)
    pending_us: Mapped[int] = mapped_column(BigInteger, default=0)
    qualifying_orders: Mapped[int] = mapped_column(Integer, default=0)
    region: Mapped[str | None] = mapped_column(String())
    last_order_at_us: Mapped[int | None] = mapped_column(BigInteger)
    grace_ends_at_us: Mapped[int | None] = mapped_column(BigInteger, index=True)
    next_change_at_us: Mapped[int | None] = mapped_column(BigInteger)
    tier_changes: Mapped[int] = mapped_column(Integer, default=0)
    evaluated_at_us: Mapped[int] = mapped_column(BigInteger)
    next_due_at_us: Mapped[int | None] = mapped_column(BigInteger, index=True)


class OverrideRow(Base):
    """A manual tier override: who set it, why, until when, and whether it was cleared."""

    __tablename__ = "overrides"

    id: Mapped[int] = mapped_column(Serial, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.customer_id"), index=True)
    tier: Mapped[str] = mapped_column(String())
    actor: Mapped[str] = mapped_column(String())
    reason: Mapped[str] = mapped_column(Text)
    set_at_us: Mapped[int] = mapped_column(BigInteger)
    until_us: Mapped[int | None] = mapped_column(BigInteger)
    cleared_at_us: Mapped[int | None] = mapped_column(BigInteger)
    cleared_by: Mapped[str | None] = mapped_column(String())


class AuditRow(Base):
    """One change of a customer's effective tier, for compliance review.

    ``at_us`` is when the change took effect, ``recorded_at_us`` the store
    clock when it was written (a late event can record a change dated earlier).
    """

    __tablename__ = "audit_log"
    __table_args__ = (Index(None, "customer_id", "id"),)

    id: Mapped[int] = mapped_column(Serial, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(String())
    at_us: Mapped[int] = mapped_column(BigInteger)
    recorded_at_us: Mapped[int] = mapped_column(BigInteger, index=True)
    old_tier: Mapped[str | None] = mapped_column(String())
    new_tier: Mapped[str | None] = mapped_column(String())
    reason: Mapped[str] = mapped_column(String())
    cause: Mapped[str | None] = mapped_column(String())
    note: Mapped[str | None] = mapped_column(Text, doc="The person's reason, for overrides.")
    policy_version: Mapped[int] = mapped_column(Integer)
    actor: Mapped[str] = mapped_column(String())


class OutboxRow(Base):
    """A message awaiting delivery (delivery is at least once, by idempotency key).

    ``status`` is ``pending`` (to send, or to retry at ``next_attempt_at_us``),
    ``delivered`` or ``dead`` (gave up after the maximum attempts; ``outbox
    retry`` makes it pending again). Per customer, messages go out in ``id``
    order: a later one waits while an earlier one is pending.
    """

    __tablename__ = "outbox"
    __table_args__ = (
        Index(None, "status", "customer_id", "id"),
        Index(None, "status", "next_attempt_at_us"),
    )

    id: Mapped[int] = mapped_column(Serial, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(), unique=True)
    kind: Mapped[str] = mapped_column(String())
    customer_id: Mapped[str] = mapped_column(String())
    payload: Mapped[str] = mapped_column(Text, doc="JSON.")
    created_at_us: Mapped[int] = mapped_column(BigInteger)
    delivered_at_us: Mapped[int | None] = mapped_column(BigInteger, index=True)
    status: Mapped[str] = mapped_column(String(), default="pending", server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at_us: Mapped[int | None] = mapped_column(BigInteger)
    last_attempt_at_us: Mapped[int | None] = mapped_column(BigInteger)
    last_error: Mapped[str | None] = mapped_column(Text)


class OutboxDeliveryRow(Base):
    """One channel that accepted an outbox message (a retry skips the channels listed here)."""

    __tablename__ = "outbox_deliveries"

    outbox_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("outbox.id"), primary_key=True)
    channel: Mapped[str] = mapped_column(String(), primary_key=True)
    delivered_at_us: Mapped[int] = mapped_column(BigInteger)
    detail: Mapped[str | None] = mapped_column(Text)


class CampaignRunRow(Base):
    """One run of a retention campaign: its parameters and counts (for uplift analysis)."""

    __tablename__ = "campaign_runs"
    __table_args__ = (Index(None, "campaign", "run_at_us"),)

    id: Mapped[int] = mapped_column(Serial, primary_key=True, autoincrement=True)
    campaign: Mapped[str] = mapped_column(String())
    run_at_us: Mapped[int] = mapped_column(BigInteger, doc="The run's --now.")
    recorded_at_us: Mapped[int] = mapped_column(BigInteger)
    model_version: Mapped[str | None] = mapped_column(String())
    threshold: Mapped[float] = mapped_column(Float)
    control_share: Mapped[float] = mapped_column(Float)
    cooldown_days: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(Integer)
    scored: Mapped[int] = mapped_column(Integer)
    above_threshold: Mapped[int] = mapped_column(Integer)
    cooling_down: Mapped[int] = mapped_column(Integer)
    treated: Mapped[int] = mapped_column(Integer)
    control: Mapped[int] = mapped_column(Integer)
    actor: Mapped[str] = mapped_column(String())
    source: Mapped[str | None] = mapped_column(String(), doc="Where the scores came from.")


class CampaignSelectionRow(Base):
    """A customer a campaign run selected: score, model version, and whether held out."""

    __tablename__ = "campaign_selections"
    __table_args__ = (UniqueConstraint("run_id", "customer_id"),)

    id: Mapped[int] = mapped_column(Serial, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("campaign_runs.id"))
    customer_id: Mapped[str] = mapped_column(String(), index=True)
    tier: Mapped[str | None] = mapped_column(String())
    churn_probability: Mapped[float] = mapped_column(Float)
    model_version: Mapped[str | None] = mapped_column(String())
    control: Mapped[bool] = mapped_column(Boolean)
    outbox_id: Mapped[int | None] = mapped_column(BigInteger, doc="The offer sent (None: control).")


class CampaignCooldownRow(Base):
    """When a campaign last selected a customer (treated or control): the cooldown's clock."""

    __tablename__ = "campaign_cooldowns"

    campaign: Mapped[str] = mapped_column(String(), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(), primary_key=True)
    last_selected_at_us: Mapped[int] = mapped_column(BigInteger)
    last_run_id: Mapped[int] = mapped_column(BigInteger)


class DowngradeWarningRow(Base):
    """A downgrade warning sent: at most one per customer and grace period."""

    __tablename__ = "downgrade_warnings"

    customer_id: Mapped[str] = mapped_column(String(), primary_key=True)
    grace_ends_at_us: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    tier: Mapped[str] = mapped_column(String())
    warned_at_us: Mapped[int] = mapped_column(BigInteger)
    outbox_id: Mapped[int | None] = mapped_column(BigInteger)


class RejectedEventRow(Base):
    """An event ``apply`` rejected, with the reason, kept for review (never in the ledger)."""

    __tablename__ = "rejected_events"

    id: Mapped[int] = mapped_column(Serial, primary_key=True, autoincrement=True)
    event_id: Mapped[str | None] = mapped_column(String(), index=True)
    reason: Mapped[str] = mapped_column(String())
    detail: Mapped[str] = mapped_column(Text)
    raw: Mapped[str] = mapped_column(Text, doc="The canonical fields as JSON.")
    received_at_us: Mapped[int] = mapped_column(BigInteger)


class ApiKeyRow(Base):
    """An API key of the HTTP service: its name (the audit actor), scopes and SHA-256 hash.

    The key itself is shown once when created and never stored.
    """

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Serial, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(), index=True)
    key_hash: Mapped[str] = mapped_column(String(), unique=True)
    scopes: Mapped[str] = mapped_column(String(), doc="Comma separated.")
    created_at_us: Mapped[int] = mapped_column(BigInteger)
    last_used_at_us: Mapped[int | None] = mapped_column(BigInteger)
    revoked_at_us: Mapped[int | None] = mapped_column(BigInteger)


class JobRow(Base):
    """Long-running work started over HTTP (a reclassification), polled by its id."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(), primary_key=True)
    kind: Mapped[str] = mapped_column(String())
    status: Mapped[str] = mapped_column(String(), index=True)
    params: Mapped[str] = mapped_column(Text, doc="JSON.")
    result: Mapped[str | None] = mapped_column(Text, doc="JSON.")
    error: Mapped[str | None] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String())
    created_at_us: Mapped[int] = mapped_column(BigInteger)
    started_at_us: Mapped[int | None] = mapped_column(BigInteger)
    finished_at_us: Mapped[int | None] = mapped_column(BigInteger)


class GrandfatherRow(Base):
    """A tier a customer keeps at least until ``until_us``, granted when a policy version was
    applied with grandfathering (the latest row of a customer is the one in force)."""

    __tablename__ = "grandfathering"
    __table_args__ = (Index(None, "customer_id", "id"),)

    id: Mapped[int] = mapped_column(Serial, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.customer_id"))
    tier: Mapped[str] = mapped_column(String())
    since_us: Mapped[int] = mapped_column(BigInteger, doc="When they got that tier.")
    set_at_us: Mapped[int] = mapped_column(BigInteger)
    until_us: Mapped[int] = mapped_column(BigInteger)
    policy_version: Mapped[int] = mapped_column(Integer)
    actor: Mapped[str] = mapped_column(String())
    note: Mapped[str | None] = mapped_column(Text)
