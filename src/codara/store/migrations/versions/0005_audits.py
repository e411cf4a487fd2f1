"""Audit sampling after the fact: a review's kind (``decision`` or ``audit``) and an audit's
sampling probability, and an index for reading a workflow's decided reviews as labels.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

Keep ``store/_schema.py`` in step; a test compares the two.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("codara_reviews") as batch:
        batch.add_column(
            sa.Column("kind", sa.String(20), nullable=False, server_default=sa.text("'decision'"))
        )
        batch.add_column(sa.Column("sampling_probability", sa.Float(precision=53)))
    op.create_index(
        "ix_codara_reviews_workflow", "codara_reviews", ["workflow", "status", "decided_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_codara_reviews_workflow", table_name="codara_reviews")
    with op.batch_alter_table("codara_reviews") as batch:
        batch.drop_column("sampling_probability")
        batch.drop_column("kind")
