"""Alembic environment: migrations run on the connection the catalog hands over."""

from alembic import context

from data_platform.catalog.schema import VERSION_TABLE, metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True, version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
