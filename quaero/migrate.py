"""Bring a database up to date with the Alembic migrations in ``migrations/``.

Runs at start-up: for a database other than SQLite once before gunicorn's workers fork
(``quaero.startup``, in a child process), and in ``create_app`` (each worker; then a
no-op). Several processes may
start at once: on PostgreSQL an advisory lock serialises them; on SQLite the loser of a
race retries and finds the schema already there. A database that cannot be reached, or
refuses the role, fails at once with one line naming it (:class:`DatabaseUnavailable`):
retrying those only delayed the same failure by 20 s.

A database already at the head revision (``alembic_version`` holds exactly the heads of
``migrations/versions``) is left alone without Alembic (:func:`is_current`, one SELECT):
each worker's check used to import Alembic and read every migration, 0.1-0.2 s of CPU at
every start. Any other answer (older, newer, no table yet) takes the locked path above.
"""
import ast
import os
import re
import time

import sqlalchemy as sa


# the package's migrations/: in a checkout a link to the repository's folder, in a wheel a copy
MIGRATIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "migrations")
_LOCK = 0x51554145  # "QUAE"
# SQLSTATE classes and codes no retry mends: the role cannot log in (28), no such
# database (3D), not allowed (42501)
_FOR_GOOD = ("28", "3D", "42501")


class StartupError(RuntimeError):
    """The server cannot start; the message is one line saying why."""


# -- one line for why the database cannot be used (start-up checks, quaero.startup) ------

def _cause(exc):
    """The reason in ``exc`` (a SQLAlchemy error: its driver's), on one line."""
    orig = getattr(exc, "orig", None) or exc
    primary = getattr(getattr(orig, "diag", None), "message_primary", None)
    lines = [" ".join(line.split()) for line in str(primary or orig).splitlines()]
    text = "; ".join(line for line in lines if line) or type(orig).__name__
    for prefix in ("connection failed: ",):
        if text.startswith(prefix):
            text = text[len(prefix):]
    state = getattr(orig, "sqlstate", None) or ""
    if state == "42501":
        text += " (the role needs to own the database: createdb --owner ROLE NAME)"
    return text


def describe(url, exc, doing="cannot connect to the database"):
    from .bus import redact
    return f"{doing} {redact(url)}: {_cause(exc)}"



class DatabaseUnavailable(StartupError):
    """The database cannot be used at start-up; the message is one line: its URL, password
    hidden, and the cause."""


def alembic_config(connection=None):
    from alembic.config import Config
    cfg = Config()
    cfg.set_main_option("script_location", MIGRATIONS)
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _url(engine):
    return engine.url.render_as_string(hide_password=False)


def _for_good(exc):
    state = getattr(getattr(exc, "orig", None), "sqlstate", None) or ""
    if any(state.startswith(code) for code in _FOR_GOOD):
        return True
    text = str(getattr(exc, "orig", exc)).lower()
    return "readonly database" in text or "unable to open database file" in text


def check_connection(engine):
    """Connect once: :class:`DatabaseUnavailable` when that fails (no retry)."""
    try:
        with engine.connect():
            pass
    except sa.exc.DBAPIError as exc:
        raise DatabaseUnavailable(describe(_url(engine), exc)) from None


_REVISION = re.compile(r"^(revision|down_revision)\s*(?::[^=]*)?=\s*(.+)$", re.M)


def head_revisions(versions=None):
    """The heads of the migrations (revisions no other one follows), read from the files'
    ``revision = ...`` and ``down_revision = ...`` lines without importing them or
    Alembic; None when a file does not say both plainly (then only Alembic knows)."""
    versions = versions or os.path.join(MIGRATIONS, "versions")
    revisions, parents = set(), set()
    for name in os.listdir(versions):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(versions, name), encoding="utf-8") as f:
            found = dict((key, value) for key, value in _REVISION.findall(f.read()))
        try:
            revision = ast.literal_eval(found["revision"].strip())
            down = ast.literal_eval(found["down_revision"].strip())
        except (KeyError, ValueError, SyntaxError):
            return None
        if not isinstance(revision, str):
            return None
        revisions.add(revision)
        parents.update((down,) if isinstance(down, str) else down or ())
    return frozenset(revisions - parents) or None


def is_current(engine):
    """Whether the database is at the head revision: its ``alembic_version`` rows are the
    heads exactly. False when it cannot tell (no such table yet, unreadable files)."""
    heads = head_revisions()
    if heads is None:
        return False
    try:
        with engine.connect() as conn:
            stamped = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars()
            return frozenset(stamped) == heads
    except sa.exc.DBAPIError:
        return False


def upgrade(engine, attempts=20):
    check_connection(engine)
    if is_current(engine):
        return  # nothing to do: no lock, no Alembic (a worker's start, a restart)
    from alembic import command
    for attempt in range(attempts):
        try:
            with engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK})
                command.upgrade(alembic_config(conn), "head")
            return
        except (sa.exc.OperationalError, sa.exc.IntegrityError, sa.exc.ProgrammingError) as exc:
            if _for_good(exc):
                raise DatabaseUnavailable(describe(
                    _url(engine), exc, "cannot bring up to date the database")) from None
            if attempt == attempts - 1:
                raise
            time.sleep(0.1 + 0.1 * attempt)


def init_db(engine):
    """Bring the schema up to date (Alembic migrations) and create the fixed counter rows
    (the id allocator, the service log's line numbers, the job numbers, the search
    index's mark, the deployment's random id); safe
    to run concurrently and repeatedly."""
    import secrets

    from .models import (DEPLOYMENT_KEY, ID_KEY, JOBS_KEY, SEARCH_KEY, SERVICE_KEY, counters_t,
                         jobs_t, log_t)
    upgrade(engine)
    for key, value in ((ID_KEY, 0), (SERVICE_KEY, 0), (JOBS_KEY, 0), (SEARCH_KEY, 0),
                       (DEPLOYMENT_KEY, secrets.randbits(62))):
        with engine.begin() as conn:
            exists = conn.execute(sa.select(counters_t.c.key).where(counters_t.c.key == key)).first()
            if not exists:
                try:
                    conn.execute(counters_t.insert().values(key=key, value=value))
                except sa.exc.IntegrityError:  # another process won the race
                    pass
    # The id allocator is never behind the lines it handed out (a database restored or
    # copied in parts): behind them, every write would collide with a stored id.
    # So is the job numbers' (``jobs.seq``).
    for key, column in ((ID_KEY, log_t.c.id), (JOBS_KEY, jobs_t.c.seq)):
        newest = sa.select(sa.func.coalesce(sa.func.max(column), 0)).scalar_subquery()
        if key == ID_KEY and engine.dialect.name == "postgresql":  # sealed lines too
            newest = sa.func.greatest(newest, sa.text(
                "(SELECT coalesce(max(last_id), 0) FROM log_blocks)"))
        with engine.begin() as conn:
            conn.execute(counters_t.update().values(value=newest).where(
                counters_t.c.key == key, counters_t.c.value < newest))
