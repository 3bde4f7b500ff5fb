"""The initial tier store: ledger, orders, customers, tier state, overrides, audit, outbox.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Serial = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _customer_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["customer_id"], ["customers.customer_id"], name=f"fk_{table}_customer_id_customers"
    )


def upgrade() -> None:
    op.create_table(
        "policy_versions",
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("fingerprint", sa.String(), nullable=False),
        sa.Column("policy_json", sa.Text(), nullable=False),
        sa.Column("source_text", sa.Text(), nullable=True),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("created_at_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("version", name="pk_policy_versions"),
    )
    op.create_table(
        "customers",
        sa.Column("customer_id", sa.String(), nullable=False),
        sa.Column("first_seen_at_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("customer_id", name="pk_customers"),
    )
    op.create_table(
        "order_events",
        sa.Column("id", Serial, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(), nullable=False),
        sa.Column("event_type", sa.String(), nullable=False),
        sa.Column("order_id", sa.String(), nullable=False),
        sa.Column("customer_id", sa.String(), nullable=False),
        sa.Column("occurred_at", sa.String(), nullable=False),
        sa.Column("at_us", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.String(), nullable=True),
        sa.Column("currency", sa.String(), nullable=True),
        sa.Column("channel", sa.String(), nullable=True),
        sa.Column("region", sa.String(), nullable=True),
        sa.Column("received_at_us", sa.BigInteger(), nullable=False),
        _customer_fk("order_events"),
        sa.PrimaryKeyConstraint("id", name="pk_order_events"),
        sa.UniqueConstraint("event_id", name="uq_order_events_event_id"),
    )
    op.create_index("ix_order_events_customer_id_id", "order_events", ["customer_id", "id"])
    op.create_table(
        "orders",
        sa.Column("order_id", sa.String(), nullable=False),
        sa.Column("customer_id", sa.String(), nullable=False),
        sa.Column("placed_event_id", sa.String(), nullable=False),
        sa.Column("placed_at_us", sa.BigInteger(), nullable=False),
        _customer_fk("orders"),
        sa.PrimaryKeyConstraint("order_id", name="pk_orders"),
    )
    op.create_index("ix_orders_customer_id", "orders", ["customer_id"])
    op.create_table(
        "tier_state",
        sa.Column("customer_id", sa.String(), nullable=False),
        sa.Column("tier", sa.String(), nullable=True),
        sa.Column("rules_tier", sa.String(), nullable=True),
        sa.Column("eligible_tier", sa.String(), nullable=True),
        sa.Column("tier_since_us", sa.BigInteger(), nullable=True),
        sa.Column("qualifying_us", sa.BigInteger(), nullable=False),
        sa.Column("pending_us", sa.BigInteger(), nullable=False),
        sa.Column("qualifying_orders", sa.Integer(), nullable=False),
        sa.Column("region", sa.String(), nullable=True),
        sa.Column("last_order_at_us", sa.BigInteger(), nullable=True),
        sa.Column("grace_ends_at_us", sa.BigInteger(), nullable=True),
        sa.Column("next_change_at_us", sa.BigInteger(), nullable=True),
        sa.Column("tier_changes", sa.Integer(), nullable=False),
        sa.Column("evaluated_at_us", sa.BigInteger(), nullable=False),
        sa.Column("next_due_at_us", sa.BigInteger(), nullable=True),
        _customer_fk("tier_state"),
        sa.PrimaryKeyConstraint("customer_id", name="pk_tier_state"),
    )
    op.create_index("ix_tier_state_next_due_at_us", "tier_state", ["next_due_at_us"])
    op.create_table(
        "overrides",
        sa.Column("id", Serial, autoincrement=True, nullable=False),
        sa.Column("customer_id", sa.String(), nullable=False),
        sa.Column("tier", sa.String(), nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("set_at_us", sa.BigInteger(), nullable=False),
        sa.Column("until_us", sa.BigInteger(), nullable=True),
        sa.Column("cleared_at_us", sa.BigInteger(), nullable=True),
        sa.Column("cleared_by", sa.String(), nullable=True),
        _customer_fk("overrides"),
        sa.PrimaryKeyConstraint("id", name="pk_overrides"),
    )
    op.create_index("ix_overrides_customer_id", "overrides", ["customer_id"])
    op.create_table(
        "audit_log",
        sa.Column("id", Serial, autoincrement=True, nullable=False),
        sa.Column("customer_id", sa.String(), nullable=False),
        sa.Column("at_us", sa.BigInteger(), nullable=False),
        sa.Column("recorded_at_us", sa.BigInteger(), nullable=False),
        sa.Column("old_tier", sa.String(), nullable=True),
        sa.Column("new_tier", sa.String(), nullable=True),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("cause", sa.String(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("policy_version", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_customer_id_id", "audit_log", ["customer_id", "id"])
    op.create_index("ix_audit_log_recorded_at_us", "audit_log", ["recorded_at_us"])
    op.create_table(
        "outbox",
        sa.Column("id", Serial, autoincrement=True, nullable=False),
        sa.Column("idempotency_key", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("customer_id", sa.String(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at_us", sa.BigInteger(), nullable=False),
        sa.Column("delivered_at_us", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
        sa.UniqueConstraint("idempotency_key", name="uq_outbox_idempotency_key"),
    )
    op.create_index("ix_outbox_delivered_at_us", "outbox", ["delivered_at_us"])
    op.create_table(
        "rejected_events",
        sa.Column("id", Serial, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(), nullable=True),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("raw", sa.Text(), nullable=False),
        sa.Column("received_at_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_rejected_events"),
    )
    op.create_index("ix_rejected_events_event_id", "rejected_events", ["event_id"])


def downgrade() -> None:
    for table in (
        "rejected_events",
        "outbox",
        "audit_log",
        "overrides",
        "tier_state",
        "orders",
        "order_events",
        "customers",
        "policy_versions",
    ):
        op.drop_table(table)
