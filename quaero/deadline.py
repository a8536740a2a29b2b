"""Database work with a deadline: a database that does not answer (frozen, stopped, a
lock held elsewhere) gives a prompt "unavailable" instead of a request that hangs.

The timer is a ``gevent.Timeout``: it fires wherever the greenlet waits (PostgreSQL's
socket, the pool, a connect, SQLite's yielding progress handler). SQLAlchemy treats it as
an exit exception and invalidates the connection it interrupted, so no half-read
connection goes back to the pool.
"""
from contextlib import contextmanager

import gevent
import sqlalchemy as sa

from .errors import Unavailable


class DatabaseLate(Unavailable):
    def __init__(self, seconds):
        super().__init__(f"the database did not answer within {seconds:g} s; retry later")


@contextmanager
def within(seconds):
    """Raise :class:`DatabaseLate` if the block's database work lasts over ``seconds``."""
    timer = gevent.Timeout(seconds)
    timer.start()
    try:
        yield
    except gevent.Timeout as exc:
        if exc is not timer:
            raise
        raise DatabaseLate(seconds) from None
    except sa.exc.DBAPIError:
        # the timer fired, and the driver said so in its own words: SQLite's progress
        # handler interrupts the query (PostgreSQL's pool ping keeps the Timeout itself:
        # quaero._ping)
        if not timer.pending:
            raise DatabaseLate(seconds) from None
        raise
    finally:
        timer.close()


@contextmanager
def reading(engine, seconds):
    """A connection from ``engine`` whose work must end within ``seconds``, else
    :class:`DatabaseLate`."""
    with within(seconds), engine.connect() as conn:
        yield conn
