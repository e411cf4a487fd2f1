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

    _upgrade_audit()
    _upgrade_accounts()


# -- accounts (h3/accounts): login attempts, for throttling and as the audit of failures
def _upgrade_accounts() -> None:
    op.create_table(
        "codara_login_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float(precision=53), nullable=False),
        sa.Column("username", sa.String(200), nullable=False),
        sa.Column("address", sa.String(100), nullable=False),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("until", sa.Float(precision=53)),
    )
    op.create_index("ix_codara_login_events_user", "codara_login_events", ["username", "at"])
    op.create_index("ix_codara_login_events_address", "codara_login_events", ["address", "at"])
    op.create_index("ix_codara_login_events_at", "codara_login_events", ["at"])
    op.create_table(
        "codara_login_throttle",
        sa.Column("key", sa.String(220), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("last_failure", sa.Float(precision=53), nullable=False),
        sa.Column("locked_until", sa.Float(precision=53), nullable=False),
    )


# -- audit trail: review events are chained; a global chained sequence of chain heads.
#    Existing data is chained here (keyed if CODARA_AUDIT_KEY is set while upgrading), so a
#    database upgraded from 0002 verifies clean.
_Time = sa.Float(precision=53)


def _upgrade_audit() -> None:
    with op.batch_alter_table("codara_review_events") as batch:
        batch.add_column(
            sa.Column("prev_hash", sa.String(64), nullable=False, server_default=sa.text("''"))
        )
        batch.add_column(
            sa.Column("hash", sa.String(64), nullable=False, server_default=sa.text("''"))
        )
    op.create_table(
        "codara_chain_heads",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("subject", sa.String(64), nullable=False),
        sa.Column("length", sa.Integer, nullable=False),
        sa.Column("head", sa.String(64), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("at", _Time, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index(
        "ix_codara_chain_heads_subject", "codara_chain_heads", ["kind", "subject", "seq"]
    )
    _backfill_audit(op.get_bind())


def _backfill_audit(conn: sa.Connection) -> None:
    from codara.store._audit import (
        HEADS_GENESIS,
        chain_key,
        event_text,
        head_text,
        review_genesis,
    )

    key = chain_key()
    heads: list[tuple[str, str, int, str, str, float]] = []
    runs = conn.execute(
        sa.text(
            "SELECT id, status, genesis_hash, COALESCE(finished_at, updated_at) FROM codara_runs "
            "WHERE status IN ('completed', 'failed', 'cancelled') ORDER BY 4, id"
        )
    ).all()
    for run_id, status, genesis, at in runs:
        last = conn.execute(
            sa.text(
                "SELECT seq, hash FROM codara_journal WHERE run_id = :r ORDER BY seq DESC LIMIT 1"
            ),
            {"r": run_id},
        ).first()
        length, head = (last[0] + 1, last[1]) if last else (0, genesis)
        heads.append(("run", run_id, length, head, status, at))
    events = conn.execute(
        sa.text(
            "SELECT id, review_id, actor, action, detail, shown, at FROM codara_review_events "
            "ORDER BY id"
        )
    ).all()
    chains: dict[str, tuple[str, int, str, float]] = {}
    for event_id, review_id, actor, action, detail, shown, at in events:
        prev, n, _, _ = chains.get(review_id, (review_genesis(review_id, key), 0, "", 0.0))
        h = key.seal(event_text(prev, review_id, actor, action, detail, shown, at))
        conn.execute(
            sa.text("UPDATE codara_review_events SET prev_hash = :p, hash = :h WHERE id = :i"),
            {"p": prev, "h": h, "i": event_id},
        )
        chains[review_id] = (h, n + 1, action, at)
    for review_id, (h, n, action, at) in chains.items():
        heads.append(("review", review_id, n, h, action, at))
    prev = HEADS_GENESIS
    for seq, (kind, subject, length, head, state, at) in enumerate(heads, start=1):
        at = float(at)
        h = key.seal(head_text(seq, kind, subject, length, head, state, at, prev))
        conn.execute(
            sa.text(
                "INSERT INTO codara_chain_heads (seq, kind, subject, length, head, state, at, "
                "prev_hash, hash) VALUES (:s, :k, :u, :l, :d, :t, :a, :p, :h)"
            ),
            {"s": seq, "k": kind, "u": subject, "l": length, "d": head, "t": state, "a": at,
             "p": prev, "h": h},
        )  # fmt: skip
        prev = h


def _downgrade_audit() -> None:
    op.drop_table("codara_chain_heads")
    with op.batch_alter_table("codara_review_events") as batch:
        batch.drop_column("hash")
        batch.drop_column("prev_hash")


def downgrade() -> None:
    op.drop_table("codara_login_throttle")  # accounts
    op.drop_table("codara_login_events")
    _downgrade_audit()
    # -- operations (h/ops)
    with op.batch_alter_table("codara_runs", naming_convention=_OPS_NAMES) as batch:
        batch.drop_constraint(_KEY_PER_WORKFLOW, type_="unique")
        batch.create_unique_constraint(_old_key_constraint(), ["idempotency_key"])
        batch.drop_column("claim_streak")
    # -- the workflow registry
    op.drop_table("codara_workflows")

    with op.batch_alter_table("codara_journal") as batch:
        batch.drop_column("branch")
