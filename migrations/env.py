"""Alembic environment: used by ``quaero.migrate.upgrade`` (a connection is passed in)
and by Flask-Migrate's ``flask --app wsgi db ...`` commands (the app's engine)."""
from alembic import context

from quaero.models import Base
from quaero.textsearch import not_search_index

config = context.config
target_metadata = Base.metadata


def run(connection):
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite",
                      compare_type=True, include_object=not_search_index)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    from flask import current_app
    with current_app.extensions["migrate"].db.engine.connect() as conn:
        run(conn)
