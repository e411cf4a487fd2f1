"""Alembic environment for Codara's own tables.

Codara runs migrations programmatically (``codara db upgrade``); the connection to migrate
is handed over in ``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context

from codara.store._schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only through codara.store.upgrade
    raise RuntimeError("run migrations with `codara db upgrade`, not the alembic command")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    version_table="codara_alembic_version",
)
with context.begin_transaction():
    context.run_migrations()
