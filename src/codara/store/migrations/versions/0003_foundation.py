"""The foundation holds: operation identity by branch, and what issue 7 adds to the schema.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

One migration for the schema changes of this release (it has not shipped yet): each part
adds its own block below. Keep ``store/_schema.py`` in step; a test compares the two.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # -- operation identity: the branch path an operation ran in ("" = the workflow's own
    #    coroutine, "0" its first child task, "0.1" that task's second child, ...)
    with op.batch_alter_table("codara_journal") as batch:
        batch.add_column(
            sa.Column("branch", sa.String(200), nullable=False, server_default=sa.text("''"))
        )

    # -- the workflow registry: every name@version some App has code for, with the JSON Schema
    #    of its input, so that a Client without the code can start runs (store/_workflows.py)
    op.create_table(
        "codara_workflows",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("version", sa.String(100), nullable=False),
        sa.Column("input_schema", sa.Text),
        sa.Column("compatible_with", sa.Text, nullable=False),
        sa.Column("ordinal", sa.Integer, nullable=False),
        sa.Column("registered_at", sa.Float(precision=53), nullable=False),
        sa.Column("seen_at", sa.Float(precision=53), nullable=False),
        sa.PrimaryKeyConstraint("name", "version", name="pk_codara_workflows"),
    )


def downgrade() -> None:
    # -- the workflow registry
    op.drop_table("codara_workflows")

    with op.batch_alter_table("codara_journal") as batch:
        batch.drop_column("branch")
