"""Reviews, their decisions, users, API tokens and console sessions.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_Time = sa.Float(precision=53)


def upgrade() -> None:
    with op.batch_alter_table("codara_runs") as batch:
        batch.add_column(sa.Column("started_by", sa.String(200)))
    op.create_table(
        "codara_reviews",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("run_id", sa.String(40), nullable=False),
        sa.Column("workflow", sa.String(200), nullable=False),
        sa.Column("step", sa.String(300), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("role", sa.String(100), nullable=False),
        sa.Column("assignee", sa.String(200)),
        sa.Column("claim_expires_at", _Time),
        sa.Column("priority", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("due_at", _Time),
        sa.Column("follow_up_at", _Time),
        sa.Column("on_timeout", sa.String(20), nullable=False),
        sa.Column("escalate_to", sa.String(100)),
        sa.Column("escalation_seconds", _Time),
        sa.Column("escalation_level", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("approvals_required", sa.Integer, nullable=False, server_default=sa.text("1")),
        sa.Column("initiator", sa.String(200)),
        sa.Column("low_risk", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("policy", sa.String(200)),
        sa.Column("policy_version", sa.String(64)),
        sa.Column("reason", sa.Text),
        sa.Column("proposal", sa.Text, nullable=False),
        sa.Column("proposal_schema", sa.Text),
        sa.Column("context", sa.Text),
        sa.Column("reject_reasons", sa.Text),
        sa.Column("outcome", sa.String(20)),
        sa.Column("result", sa.Text),
        sa.Column("version", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("created_at", _Time, nullable=False),
        sa.Column("updated_at", _Time, nullable=False),
        sa.Column("decided_at", _Time),
    )
    op.create_index("ix_codara_reviews_queue", "codara_reviews", ["status", "role", "due_at"])
    op.create_index("ix_codara_reviews_run", "codara_reviews", ["run_id"])
    op.create_index(
        "ix_codara_reviews_due",
        "codara_reviews",
        ["due_at"],
        sqlite_where=sa.text("status IN ('pending', 'claimed')"),
        postgresql_where=sa.text("status IN ('pending', 'claimed')"),
    )
    op.create_table(
        "codara_review_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("review_id", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("detail", sa.Text),
        sa.Column("shown", sa.Text),
        sa.Column("at", _Time, nullable=False),
    )
    op.create_index("ix_codara_review_events_review", "codara_review_events", ["review_id", "id"])
    op.create_table(
        "codara_users",
        sa.Column("username", sa.String(200), primary_key=True),
        sa.Column("password_hash", sa.Text),
        sa.Column("roles", sa.Text, nullable=False),
        sa.Column("disabled", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("created_at", _Time, nullable=False),
    )
    op.create_table(
        "codara_tokens",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("username", sa.String(200), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("created_at", _Time, nullable=False),
        sa.Column("expires_at", _Time),
        sa.Column("revoked", sa.Integer, nullable=False, server_default=sa.text("0")),
    )
    op.create_index("ix_codara_tokens_user", "codara_tokens", ["username"])


def downgrade() -> None:
    op.drop_table("codara_tokens")
    op.drop_table("codara_users")
    op.drop_table("codara_review_events")
    op.drop_table("codara_reviews")
    with op.batch_alter_table("codara_runs") as batch:
        batch.drop_column("started_by")
