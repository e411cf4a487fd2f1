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


# operations (h/ops): constraint names
_OPS_NAMES = {"uq": "uq_%(table_name)s_%(column_0_name)s"}
_KEY_PER_WORKFLOW = "uq_codara_runs_workflow_idempotency_key"


def _old_key_constraint() -> str:
    """0001's `unique=True` on idempotency_key: PostgreSQL named it itself; SQLite left it
    unnamed (batch mode names it through ``_OPS_NAMES``)."""
    if op.get_bind().dialect.name == "postgresql":
        return "codara_runs_idempotency_key_key"
    return "uq_codara_runs_idempotency_key"


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

    # -- operations (h/ops): poison runs and idempotency keys per workflow.
    #    claim_streak counts the claims in a row whose previous claim did not end cleanly (the
    #    lease lapsed while the run was still `running`); a run past [worker] max_claims fails
    #    with PoisonRunError. The idempotency key becomes unique per workflow, not globally.
    #    SQLite cannot drop a constraint in place: batch mode recreates the table, and the
    #    naming convention names 0001's unnamed UNIQUE so that it can be dropped.
    with op.batch_alter_table("codara_runs", naming_convention=_OPS_NAMES) as batch:
        batch.add_column(
            sa.Column("claim_streak", sa.Integer, nullable=False, server_default=sa.text("0"))
        )
        batch.drop_constraint(_old_key_constraint(), type_="unique")
        batch.create_unique_constraint(_KEY_PER_WORKFLOW, ["workflow", "idempotency_key"])


def downgrade() -> None:
    # -- operations (h/ops)
    with op.batch_alter_table("codara_runs", naming_convention=_OPS_NAMES) as batch:
        batch.drop_constraint(_KEY_PER_WORKFLOW, type_="unique")
        batch.create_unique_constraint(_old_key_constraint(), ["idempotency_key"])
        batch.drop_column("claim_streak")
    # -- the workflow registry
    op.drop_table("codara_workflows")

    with op.batch_alter_table("codara_journal") as batch:
        batch.drop_column("branch")
