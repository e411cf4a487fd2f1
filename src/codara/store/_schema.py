"""The one schema of Codara's own tables, for SQLite and PostgreSQL alike.

Alembic migrations (``codara/store/migrations``) create and evolve it; this module is the
description the migrations and the queries share. Times are UNIX epoch seconds stored as
double precision, so both databases hold and compare them the same way.

``runs.ready_at`` drives the queue: it is the moment a run may be claimed, whatever its
status: the enqueue time of a queued run, the wake time of a sleeping or waiting run, the
lease expiry of a running run, and NULL for a finished run or one that waits without a
deadline. Claiming is therefore one range scan over one index.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from codara.store._types import RUN_STATUSES, TERMINAL_STATUSES

__all__ = [
    "RUN_STATUSES",
    "TERMINAL_STATUSES",
    "chain_heads",
    "journal",
    "login_events",
    "login_throttle",
    "metadata",
    "quarantine",
    "review_events",
    "reviews",
    "runs",
    "signals",
    "tokens",
    "unmask_events",
    "users",
    "vault",
    "workflows",
]

metadata = MetaData()


_Time = Float(precision=53)

runs = Table(
    "codara_runs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("workflow", String(200), nullable=False),
    Column("version", String(100), nullable=False),
    Column("workflow_key", String(301), nullable=False),
    Column("status", String(20), nullable=False),
    Column("input", Text, nullable=False),
    Column("output", Text),
    Column("error", Text),
    Column("ready_at", _Time),
    Column("owner", String(100)),
    Column("token", Integer, nullable=False, server_default=text("0")),
    Column("waiting_for", String(200)),
    Column("signal_version", Integer, nullable=False, server_default=text("0")),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("idempotency_key", String(200)),
    Column("genesis_hash", String(64), nullable=False),
    Column("created_at", _Time, nullable=False),
    Column("updated_at", _Time, nullable=False),
    Column("finished_at", _Time),
    Column("started_by", String(200)),
    # claims in a row whose previous claim ended without a clean finish, park or hand-back
    # (the lease lapsed while running); past [worker] max_claims the run is poisoned
    Column("claim_streak", Integer, nullable=False, server_default=text("0")),
    # an idempotency key names one run per workflow
    UniqueConstraint("workflow", "idempotency_key", name="uq_codara_runs_workflow_idempotency_key"),
    Index(
        "ix_codara_runs_ready",
        "ready_at",
        sqlite_where=text("ready_at IS NOT NULL"),
        postgresql_where=text("ready_at IS NOT NULL"),
    ),
    Index("ix_codara_runs_status_created", "status", "created_at"),
    Index("ix_codara_runs_workflow_created", "workflow", "created_at"),
    Index("ix_codara_runs_owner", "owner"),
)

journal = Table(
    "codara_journal",
    metadata,
    Column("run_id", String(40), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("op", Integer, nullable=False),
    Column("kind", String(20), nullable=False),
    Column("name", String(300), nullable=False),
    Column("status", String(10), nullable=False),
    Column("input", Text),
    Column("output", Text),
    Column("error", Text),
    Column("started_at", _Time, nullable=False),
    Column("finished_at", _Time, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    # the branch path of the operation: "" for the workflow's own coroutine, "0.1" for the
    # second child task of its first child task (see engine/_context.py)
    Column("branch", String(200), nullable=False, server_default=text("''")),
    PrimaryKeyConstraint("run_id", "seq", name="pk_codara_journal"),
    sqlite_with_rowid=False,
)

signals = Table(
    "codara_signals",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(40), nullable=False),
    Column("name", String(200), nullable=False),
    Column("payload", Text),
    Column("created_at", _Time, nullable=False),
    Column("consumed_seq", Integer),
    Index("ix_codara_signals_run_name", "run_id", "name", "consumed_seq"),
)

reviews = Table(
    "codara_reviews",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("run_id", String(40), nullable=False),
    Column("workflow", String(200), nullable=False),
    Column("step", String(300), nullable=False),
    Column("status", String(20), nullable=False),  # pending | claimed | decided | closed
    Column("role", String(100), nullable=False),
    Column("assignee", String(200)),
    Column("claim_expires_at", _Time),
    Column("priority", Integer, nullable=False, server_default=text("0")),
    Column("due_at", _Time),
    Column("follow_up_at", _Time),
    Column("on_timeout", String(20), nullable=False),  # approve | deny | escalate
    Column("escalate_to", String(100)),
    Column("escalation_seconds", _Time),
    Column("escalation_level", Integer, nullable=False, server_default=text("0")),
    Column("approvals_required", Integer, nullable=False, server_default=text("1")),
    Column("initiator", String(200)),
    Column("low_risk", Integer, nullable=False, server_default=text("0")),
    Column("policy", String(200)),
    Column("policy_version", String(64)),
    Column("reason", Text),
    Column("proposal", Text, nullable=False),
    Column("proposal_schema", Text),
    Column("context", Text),
    Column("reject_reasons", Text),
    Column("outcome", String(20)),  # approved | edited | rejected
    Column("result", Text),
    Column("version", Integer, nullable=False, server_default=text("0")),
    Column("created_at", _Time, nullable=False),
    Column("updated_at", _Time, nullable=False),
    Column("decided_at", _Time),
    # decision: the run waits for it; audit: a sampled automatic answer that went out at once,
    # its verdict a label (never a signal to the run), with the chance it had of being sampled
    Column("kind", String(20), nullable=False, server_default=text("'decision'")),
    Column("sampling_probability", _Time),
    Index("ix_codara_reviews_queue", "status", "role", "due_at"),
    Index("ix_codara_reviews_workflow", "workflow", "status", "decided_at"),
    Index("ix_codara_reviews_run", "run_id"),
    Index(
        "ix_codara_reviews_due",
        "due_at",
        sqlite_where=text("status IN ('pending', 'claimed')"),
        postgresql_where=text("status IN ('pending', 'claimed')"),
    ),
)

# The business metric's definitions as recorded (who, when, the one before) and the
# promotions of workflow versions between stages (see store/_gate.py and codara.metrics).
metric_definitions = Table(
    "codara_metric_definitions",
    metadata,
    Column("workflow", String(200), nullable=False),
    Column("version", String(64), nullable=False),
    Column("definition", Text, nullable=False),
    Column("recorded_at", _Time, nullable=False),
    Column("recorded_by", String(200), nullable=False),
    Column("previous", String(64)),
    PrimaryKeyConstraint("workflow", "version", "recorded_at", name="pk_codara_metric_definitions"),
)

promotions = Table(
    "codara_promotions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("workflow", String(200), nullable=False),
    Column("workflow_version", String(100), nullable=False),
    Column("from_stage", String(20), nullable=False),
    Column("to_stage", String(20), nullable=False),  # pilot | shadow | production
    Column("action", String(20), nullable=False),  # promote | override | rollback
    Column("actor", String(200), nullable=False),
    Column("reason", Text),
    Column("evidence", Text, nullable=False),  # the gate's report, as JSON
    Column("versions", Text, nullable=False),  # workflow, policies, prompts, model, metric
    Column("at", _Time, nullable=False),
    Index("ix_codara_promotions_workflow", "workflow", "id"),
)

review_events = Table(
    "codara_review_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("review_id", String(64), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("action", String(20), nullable=False),
    Column("detail", Text),
    Column("shown", Text),  # a snapshot of exactly what the reviewer was shown
    Column("at", _Time, nullable=False),
    # the review's event chain: each event hashes the one before (see store/_audit.py)
    Column("prev_hash", String(64), nullable=False, server_default=text("''")),
    Column("hash", String(64), nullable=False, server_default=text("''")),
    Index("ix_codara_review_events_review", "review_id", "id"),
)

# The global, append-only, chained sequence of chain heads: one row when a run finishes or
# is cancelled and one per review event (see store/_audit.py and trace/_chain.py).
chain_heads = Table(
    "codara_chain_heads",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("kind", String(10), nullable=False),  # run | review
    Column("subject", String(64), nullable=False),  # the run id or the review id
    Column("length", Integer, nullable=False),  # rows in that chain at this point
    Column("head", String(64), nullable=False),  # the hash of its last row (or its genesis)
    Column("state", String(20), nullable=False),  # a run's final status, an event's action
    Column("at", _Time, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index("ix_codara_chain_heads_subject", "kind", "subject", "seq"),
)

users = Table(
    "codara_users",
    metadata,
    Column("username", String(200), primary_key=True),
    Column("password_hash", Text),
    Column("roles", Text, nullable=False),
    Column("disabled", Integer, nullable=False, server_default=text("0")),
    Column("created_at", _Time, nullable=False),
)

tokens = Table(
    "codara_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("username", String(200), nullable=False),
    Column("name", String(200), nullable=False),
    Column("kind", String(20), nullable=False),  # api | session
    Column("created_at", _Time, nullable=False),
    Column("expires_at", _Time),
    Column("revoked", Integer, nullable=False, server_default=text("0")),
    Index("ix_codara_tokens_user", "username"),
)

# Login attempts (schema 0003, accounts): every failure, success, refused-while-locked attempt
# and lockout, by user name and address: the audit record of failures and lockouts (pruned
# after the retention of auth.LoginLimits). ``until`` is when a lockout ends.
login_events = Table(
    "codara_login_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", _Time, nullable=False),
    Column("username", String(200), nullable=False),
    Column("address", String(100), nullable=False),
    # failure | success | locked | lockout_user | lockout_address
    Column("outcome", String(20), nullable=False),
    Column("until", _Time),
    Index("ix_codara_login_events_user", "username", "at"),
    Index("ix_codara_login_events_address", "address", "at"),
    Index("ix_codara_login_events_at", "at"),
)

# Login throttling state (schema 0003), one row per ``user:NAME`` and ``addr:ADDRESS``: the
# failures in the current streak, the last one, and the end of the current lockout. Every
# attempt updates its rows under the row lock before the password is checked, so concurrent
# attempts cannot slip past the limit; a lockout holds across processes and restarts.
login_throttle = Table(
    "codara_login_throttle",
    metadata,
    Column("key", String(220), primary_key=True),
    Column("failures", Integer, nullable=False),
    Column("last_failure", _Time, nullable=False),
    Column("locked_until", _Time, nullable=False),
)

# The workflow registry (schema 0003): every name@version some App has code for, with the JSON
# Schema of its input, so that a Client without the code can start runs (store/_workflows.py).
workflows = Table(
    "codara_workflows",
    metadata,
    Column("name", String(200), nullable=False),
    Column("version", String(100), nullable=False),
    Column("input_schema", Text),  # JSON Schema of the input; NULL: the code declares none
    Column("compatible_with", Text, nullable=False),  # JSON list of older versions
    Column("ordinal", Integer, nullable=False),
    Column("registered_at", _Time, nullable=False),
    Column("seen_at", _Time, nullable=False),
    PrimaryKeyConstraint("name", "version", name="pk_codara_workflows"),
)

# Quarantine (schema 0004): the records a source read could not accept (a ragged row, bytes
# that are not the declared encoding, a record its model refuses), one row each, written in
# the transaction that journals the read, so a record is quarantined exactly once however
# often the run is resumed. ``record`` holds the record as the journal would (masked);
# ``status`` is open until a person retries (released) or drops it.
quarantine = Table(
    "codara_quarantine",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("at", _Time, nullable=False),
    Column("run_id", String(40), nullable=False),
    Column("workflow", String(200), nullable=False),
    Column("source", String(200), nullable=False),
    Column("op", Integer, nullable=False),
    Column("position", String(500), nullable=False),
    Column("rule", String(200), nullable=False),
    Column("reason", Text, nullable=False),
    Column("record", Text, nullable=False),
    Column("status", String(20), nullable=False, server_default=text("'open'")),
    Column("resolved_at", _Time),
    Column("resolved_by", String(200)),
    Index("ix_codara_quarantine_status", "status", "at"),
    Index("ix_codara_quarantine_source", "source", "rule"),
    Index("ix_codara_quarantine_run", "run_id"),
)

# The vault (schema 0004): the original of each personal value that was masked, sealed
# (AES-GCM, key from CODARA_VAULT_KEY; base64 text), one row per token. The journal, runs,
# reviews and quarantine hold only tokens; erasing a person deletes their rows here, which
# leaves every hash chain intact (crypto-shredding).
vault = Table(
    "codara_vault",
    metadata,
    Column("token", String(100), primary_key=True),
    Column("kind", String(20), nullable=False),
    Column("sealed", Text, nullable=False),
    Column("created_at", _Time, nullable=False),
)

# Every unmasking: who saw which token's original, when, for which run and why.
unmask_events = Table(
    "codara_unmask_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", _Time, nullable=False),
    Column("actor", String(200), nullable=False),
    Column("token", String(100), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("run_id", String(40)),
    Column("purpose", String(500), nullable=False),
    Index("ix_codara_unmask_events_token", "token", "at"),
)
