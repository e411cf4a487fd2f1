"""The business metric and the gate: metric definitions as recorded (who, when, the one
before) and promotions of workflow versions between stages, with their evidence.

Revision ID: 0008
Revises: 0005
Create Date: 2026-12-03

Keep ``store/_schema.py`` in step; a test compares the two.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "codara_metric_definitions",
        sa.Column("workflow", sa.String(200), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("definition", sa.Text, nullable=False),
        sa.Column("recorded_at", sa.Float(precision=53), nullable=False),
        sa.Column("recorded_by", sa.String(200), nullable=False),
        sa.Column("previous", sa.String(64)),
        sa.PrimaryKeyConstraint(
            "workflow", "version", "recorded_at", name="pk_codara_metric_definitions"
        ),
    )
    op.create_table(
        "codara_promotions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("workflow", sa.String(200), nullable=False),
        sa.Column("workflow_version", sa.String(100), nullable=False),
        sa.Column("from_stage", sa.String(20), nullable=False),
        sa.Column("to_stage", sa.String(20), nullable=False),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("evidence", sa.Text, nullable=False),
        sa.Column("versions", sa.Text, nullable=False),
        sa.Column("at", sa.Float(precision=53), nullable=False),
    )
    op.create_index("ix_codara_promotions_workflow", "codara_promotions", ["workflow", "id"])


def downgrade() -> None:
    op.drop_index("ix_codara_promotions_workflow", table_name="codara_promotions")
    op.drop_table("codara_promotions")
    op.drop_table("codara_metric_definitions")
