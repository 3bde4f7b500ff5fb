"""Grandfathering: tiers kept under a new policy until a date.

- ``grandfathering``: one row per customer covered when a policy version was
  applied with ``--grandfather-until``: the tier they keep at least (``tier``,
  their effective tier then), since when they had it, until when, the policy
  version, actor and note. The latest row of a customer is the one in force.
- ``policy_versions`` gains ``grandfather_until_us`` and ``note``: the choice
  made when the version was applied (NULL: no grandfathering), for the audit.

Revision ID: 0004_grandfather
Revises: 0003_service
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_grandfather"
down_revision: str | None = "0003_service"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Serial = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "grandfathering",
        sa.Column("id", Serial, autoincrement=True, nullable=False),
        sa.Column("customer_id", sa.String(), nullable=False),
        sa.Column("tier", sa.String(), nullable=False),
        sa.Column("since_us", sa.BigInteger(), nullable=False),
        sa.Column("set_at_us", sa.BigInteger(), nullable=False),
        sa.Column("until_us", sa.BigInteger(), nullable=False),
        sa.Column("policy_version", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.customer_id"],
            name="fk_grandfathering_customer_id_customers",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_grandfathering"),
    )
    op.create_index("ix_grandfathering_customer_id_id", "grandfathering", ["customer_id", "id"])
    with op.batch_alter_table("policy_versions") as batch:
        batch.add_column(sa.Column("grandfather_until_us", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("note", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("policy_versions") as batch:
        batch.drop_column("note")
        batch.drop_column("grandfather_until_us")
    op.drop_index("ix_grandfathering_customer_id_id", table_name="grandfathering")
    op.drop_table("grandfathering")
