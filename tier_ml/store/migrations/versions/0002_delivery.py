"""Delivery: outbox delivery state and dead letters, per-channel deliveries, campaigns, warnings.

- ``outbox`` gains its delivery state: ``status`` (``pending``, ``delivered``,
  ``dead``), ``attempts``, ``next_attempt_at_us`` (exponential backoff),
  ``last_error`` and ``last_attempt_at_us``. ``delivered_at_us`` exists since 0001.
- ``outbox_deliveries``: one row per (message, channel) that already accepted
  the message, so a retry after a partial failure only re-sends to the channels
  that failed.
- ``campaign_runs`` / ``campaign_selections``: every retention-campaign run and
  who it selected (score, model version, control flag), so uplift can be
  measured later.
- ``campaign_cooldowns``: when a customer was last selected per campaign.
- ``downgrade_warnings``: one warning per customer and grace period.

Revision ID: 0002_delivery
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_delivery"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Serial = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("status", sa.String(), nullable=False, server_default="pending"))
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("next_attempt_at_us", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("last_attempt_at_us", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("last_error", sa.Text(), nullable=True))
    # Messages delivered before delivery tracking existed count as delivered.
    op.execute("UPDATE outbox SET status = 'delivered' WHERE delivered_at_us IS NOT NULL")
    op.create_index("ix_outbox_status_customer_id_id", "outbox", ["status", "customer_id", "id"])
    op.create_index(
        "ix_outbox_status_next_attempt_at_us", "outbox", ["status", "next_attempt_at_us"]
    )
    op.create_index("ix_tier_state_grace_ends_at_us", "tier_state", ["grace_ends_at_us"])

    op.create_table(
        "outbox_deliveries",
        sa.Column("outbox_id", sa.BigInteger(), nullable=False),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("delivered_at_us", sa.BigInteger(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["outbox_id"], ["outbox.id"], name="fk_outbox_deliveries_outbox_id_outbox"
        ),
        sa.PrimaryKeyConstraint("outbox_id", "channel", name="pk_outbox_deliveries"),
    )
    op.create_table(
        "campaign_runs",
        sa.Column("id", Serial, autoincrement=True, nullable=False),
        sa.Column("campaign", sa.String(), nullable=False),
        sa.Column("run_at_us", sa.BigInteger(), nullable=False),
        sa.Column("recorded_at_us", sa.BigInteger(), nullable=False),
        sa.Column("model_version", sa.String(), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("control_share", sa.Float(), nullable=False),
        sa.Column("cooldown_days", sa.Integer(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("scored", sa.Integer(), nullable=False),
        sa.Column("above_threshold", sa.Integer(), nullable=False),
        sa.Column("cooling_down", sa.Integer(), nullable=False),
        sa.Column("treated", sa.Integer(), nullable=False),
        sa.Column("control", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("source", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_campaign_runs"),
    )
    op.create_index(
        "ix_campaign_runs_campaign_run_at_us", "campaign_runs", ["campaign", "run_at_us"]
    )
    op.create_table(
        "campaign_selections",
        sa.Column("id", Serial, autoincrement=True, nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("customer_id", sa.String(), nullable=False),
        sa.Column("tier", sa.String(), nullable=True),
        sa.Column("churn_probability", sa.Float(), nullable=False),
        sa.Column("model_version", sa.String(), nullable=True),
        sa.Column("control", sa.Boolean(), nullable=False),
        sa.Column("outbox_id", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["campaign_runs.id"], name="fk_campaign_selections_run_id_campaign_runs"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_campaign_selections"),
        sa.UniqueConstraint(
            "run_id", "customer_id", name="uq_campaign_selections_run_id_customer_id"
        ),
    )
    op.create_index("ix_campaign_selections_customer_id", "campaign_selections", ["customer_id"])
    op.create_table(
        "campaign_cooldowns",
        sa.Column("campaign", sa.String(), nullable=False),
        sa.Column("customer_id", sa.String(), nullable=False),
        sa.Column("last_selected_at_us", sa.BigInteger(), nullable=False),
        sa.Column("last_run_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("campaign", "customer_id", name="pk_campaign_cooldowns"),
    )
    op.create_table(
        "downgrade_warnings",
        sa.Column("customer_id", sa.String(), nullable=False),
        sa.Column("grace_ends_at_us", sa.BigInteger(), nullable=False),
        sa.Column("tier", sa.String(), nullable=False),
        sa.Column("warned_at_us", sa.BigInteger(), nullable=False),
        sa.Column("outbox_id", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("customer_id", "grace_ends_at_us", name="pk_downgrade_warnings"),
    )


def downgrade() -> None:
    for table in (
        "downgrade_warnings",
        "campaign_cooldowns",
        "campaign_selections",
        "campaign_runs",
        "outbox_deliveries",
    ):
        op.drop_table(table)
    op.drop_index("ix_tier_state_grace_ends_at_us", table_name="tier_state")
    op.drop_index("ix_outbox_status_next_attempt_at_us", table_name="outbox")
    op.drop_index("ix_outbox_status_customer_id_id", table_name="outbox")
    with op.batch_alter_table("outbox") as batch:
        for column in (
            "last_error",
            "last_attempt_at_us",
            "next_attempt_at_us",
            "attempts",
            "status",
        ):
            batch.drop_column(column)
