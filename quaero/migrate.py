"""Bring a database up to date with the Alembic migrations in ``migrations/``.

Runs at start-up (``create_app``, and once in gunicorn's master before workers fork).
Several processes may start at once: on PostgreSQL an advisory lock serialises them;
on SQLite the loser of a race retries and finds the schema already there.
"""
import os
import time

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

# the package's migrations/: in a checkout a link to the repository's folder, in a wheel a copy
MIGRATIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "migrations")
_LOCK = 0x51554145  # "QUAE"


def alembic_config(connection=None):
    cfg = Config()
    cfg.set_main_option("script_location", MIGRATIONS)
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def upgrade(engine, attempts=20):
    for attempt in range(attempts):
        try:
            with engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK})
                command.upgrade(alembic_config(conn), "head")
            return
        except (sa.exc.OperationalError, sa.exc.IntegrityError, sa.exc.ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.1 + 0.1 * attempt)
