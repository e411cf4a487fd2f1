"""Governed data: the quarantine of records a read could not accept, the vault of masked
personal values' originals, and the record of every unmasking.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

Keep ``store/_schema.py`` in step; a test compares the two.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "codara_quarantine",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("at", sa.Float(precision=53), nullable=False),
        sa.Column("run_id", sa.String(40), nullable=False),
        sa.Column("workflow", sa.String(200), nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("op", sa.Integer, nullable=False),
        sa.Column("position", sa.String(500), nullable=False),
        sa.Column("rule", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("record", sa.Text, nullable=False),
        sa.Column("status", sa.String(20), nullable=False, server_default=sa.text("'open'")),
        sa.Column("resolved_at", sa.Float(precision=53)),
        sa.Column("resolved_by", sa.String(200)),
    )
    op.create_index("ix_codara_quarantine_status", "codara_quarantine", ["status", "at"])
    op.create_index("ix_codara_quarantine_source", "codara_quarantine", ["source", "rule"])
    op.create_index("ix_codara_quarantine_run", "codara_quarantine", ["run_id"])
    op.create_table(
        "codara_vault",
        sa.Column("token", sa.String(100), primary_key=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("sealed", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float(precision=53), nullable=False),
    )
    op.create_table(
        "codara_unmask_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float(precision=53), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("token", sa.String(100), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("run_id", sa.String(40)),
        sa.Column("purpose", sa.String(500), nullable=False),
    )
    op.create_index("ix_codara_unmask_events_token", "codara_unmask_events", ["token", "at"])


def downgrade() -> None:
    op.drop_table("codara_unmask_events")
    op.drop_table("codara_vault")
    op.drop_table("codara_quarantine")
