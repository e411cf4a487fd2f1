"""Runs, the journal and signals: the durable engine's tables.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_Time = sa.Float(precision=53)


def upgrade() -> None:
    op.create_table(
        "codara_runs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("workflow", sa.String(200), nullable=False),
        sa.Column("version", sa.String(100), nullable=False),
        sa.Column("workflow_key", sa.String(301), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("input", sa.Text, nullable=False),
        sa.Column("output", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("ready_at", _Time),
        sa.Column("owner", sa.String(100)),
        sa.Column("token", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("waiting_for", sa.String(200)),
        sa.Column("signal_version", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("idempotency_key", sa.String(200), unique=True),
        sa.Column("genesis_hash", sa.String(64), nullable=False),
        sa.Column("created_at", _Time, nullable=False),
        sa.Column("updated_at", _Time, nullable=False),
        sa.Column("finished_at", _Time),
    )
    op.create_index(
        "ix_codara_runs_ready",
        "codara_runs",
        ["ready_at"],
        sqlite_where=sa.text("ready_at IS NOT NULL"),
        postgresql_where=sa.text("ready_at IS NOT NULL"),
    )
    op.create_index("ix_codara_runs_status_created", "codara_runs", ["status", "created_at"])
    op.create_index("ix_codara_runs_workflow_created", "codara_runs", ["workflow", "created_at"])
    op.create_index("ix_codara_runs_owner", "codara_runs", ["owner"])
    op.create_table(
        "codara_journal",
        sa.Column("run_id", sa.String(40), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("op", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("name", sa.String(300), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("input", sa.Text),
        sa.Column("output", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("started_at", _Time, nullable=False),
        sa.Column("finished_at", _Time, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "seq", name="pk_codara_journal"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "codara_signals",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(40), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("payload", sa.Text),
        sa.Column("created_at", _Time, nullable=False),
        sa.Column("consumed_seq", sa.Integer),
    )
    op.create_index(
        "ix_codara_signals_run_name", "codara_signals", ["run_id", "name", "consumed_seq"]
    )


def downgrade() -> None:
    op.drop_table("codara_signals")
    op.drop_table("codara_journal")
    op.drop_table("codara_runs")
