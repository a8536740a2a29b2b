"""Quaero: a self-hosted live log service for jobs and services.

The server's modules are imported inside ``create_app`` and ``Quaero``, not here: an
application that only sends its logs (``import quaero.client``) must not load Flask,
SQLAlchemy or gevent."""
import logging
import os

from ._version import __version__

log = logging.getLogger("quaero")
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class Quaero:
    """Per-app shared state, kept in ``app.extensions["quaero"]``: every long-lived part,
    built here, and :meth:`start` for the background work of each worker process."""

    def __init__(self, app, engine):
        from .bus import LocalBus, RedisBus, deployment_channel
        from .disk import DiskGuard
        from .ingest import Ingestor
        from .metrics import Metrics
        from .retention import Pruner
        from .runner import Runner
        from .servicelog import IngestHandler
        from .streaming.hub import StreamHub
        from .streaming.pacing import stream_cap
        cfg = app.config
        self.app = app
        self.engine = engine
        self._started_pid = None
        self.metrics = Metrics()
        self.bus = (RedisBus(cfg["QUAERO_REDIS_URL"],
                             cfg["QUAERO_REDIS_CHANNEL"] or deployment_channel(engine))
                    if cfg["QUAERO_REDIS_URL"] else LocalBus())
        self.disk = DiskGuard(engine, cfg["QUAERO_MIN_FREE_BYTES"])
        self.ingestor = Ingestor(engine, self.bus, self.metrics, cfg["QUAERO_LOG_BUFFER_LINES"],
                                 timeout=cfg["QUAERO_INGEST_TIMEOUT"], disk=self.disk)
        # gunicorn's post_worker_init sizes the cap again from the worker's own connections
        self.hub = StreamHub(app, engine, self.bus, self.metrics,
                             stream_cap(cfg["QUAERO_WORKER_CONNECTIONS"], cfg["QUAERO_MAX_STREAMS"]),
                             cfg["QUAERO_WATCH_INTERVAL"])
        self.hub.retry_scale = float(cfg["QUAERO_STREAM_RETRY_SCALE"])
        archive = None
        if cfg["QUAERO_ARCHIVE_DIR"]:
            from .archive import Archiver
            from .retention import let_others_run
            archive = Archiver(cfg["QUAERO_ARCHIVE_DIR"], let_others_run)
        self.pruner = Pruner(engine, cfg["QUAERO_RETENTION_DAYS"],
                             cfg["QUAERO_MAX_LINES_PER_JOB"], cfg["QUAERO_PRUNE_INTERVAL"],
                             cfg["QUAERO_MAX_DB_BYTES"], self.disk, archive,
                             cfg["QUAERO_SEAL_AFTER"])
        self.log_handler = IngestHandler(self.ingestor)
        self.runner = Runner(app, self)
        from .alerts.service import AlertService
        from .runner.cron import ScheduleRunner
        self.alerts = AlertService(app, self)
        self.schedules = ScheduleRunner(app, self)
        self.version = __version__  # what /healthz reports
        self.group = None  # this process's background greenlets, from start() to stop()
        self._loggers = [logging.getLogger("quaero")]
        if app.config["QUAERO_CAPTURE_ROOT_LOGGER"]:
            self._loggers.append(logging.getLogger())
        for logger in self._loggers:
            logger.addHandler(self.log_handler)
            if logger.level == logging.NOTSET or logger.level > logging.INFO:
                logger.setLevel(logging.INFO)

    @property
    def parts(self):
        """The parts with background work, in start order (the writer first: the others
        log, and their lines go through it); :meth:`stop` goes the other way."""
        return (self.ingestor, self.bus, self.hub, self.pruner, self.runner, self.alerts,
                self.schedules)

    def start(self):
        """Start this process's background work, once per process, each part's greenlets
        in one group: the writer, the bus's Redis link, the stream hub's ticker and
        watcher, the pruner, the runner's scheduler, the alert evaluator and the
        schedules' ticker. Called explicitly: by gunicorn's
        ``post_worker_init`` in each worker, by ``run --local`` and by the tests' app
        fixture; nothing starts lazily from a request. The one place that asks which
        process this is: gunicorn forks its workers."""
        from gevent.pool import Group
        pid = os.getpid()
        if self._started_pid == pid:
            return
        self._started_pid = pid
        self.group = Group()
        for part in self.parts:
            part.start(self.group)

    @property
    def pid(self):
        return self._started_pid

    def started_here(self):
        """Whether :meth:`start` ran in this process (not in the one it was forked from)."""
        return self._started_pid == os.getpid()

    def shutdown(self):
        """The process is stopping: close streams; in-flight ingest still commits."""
        self.hub.shutdown()

    def stop(self, timeout=5.0):
        """Stop this process's background work: the runner's jobs end, streams close, the
        writer commits what is queued (for at most ``timeout``), and then no greenlet of
        the group is left."""
        for part in reversed(self.parts):
            part.stop()
        if self.group is not None and self.started_here():
            self.ingestor.drain(timeout)
            self.group.kill(block=True, timeout=timeout)

    def close(self):
        """Stop, and let go of everything: the loggers' handler, the database's pool."""
        self.stop()
        for logger in self._loggers:
            logger.removeHandler(self.log_handler)
        self.engine.dispose()


def _sqlite_pragmas(dbapi_conn, record):
    cur = dbapi_conn.cursor()
    # journal_size_limit: a WAL that a long transaction or a burst grew is cut back to
    # 64 MiB at its next reset (else it keeps its largest size on the disk for good)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON",
                   "busy_timeout=10000", "journal_size_limit=67108864"):
        cur.execute("PRAGMA " + pragma)
    cur.close()
    from .textsearch import register_sqlite_functions
    register_sqlite_functions(dbapi_conn)
    _yield_during_reads(dbapi_conn, record)


def _sqlite_plain_binds():
    """sqlite3 binds an int, float or str parameter as it is, but takes a None or bytes
    one for something to adapt: it looks for an adapter, then asks its protocol type for
    ``__adapt__``, which builds an AttributeError and drops it, a third of a microsecond
    a value (Python 3.11). A line insert binds 3 to 5 of them (job, step, source, trace
    and span ids): identity adapters make each a dictionary hit. Process-wide (the
    module's registry), and no value is bound otherwise than before."""
    import sqlite3
    sqlite3.register_adapter(type(None), {}.get)   # None -> None: NULL
    sqlite3.register_adapter(bytes, bytes)         # the same bytes: a BLOB


SQLITE_SLICE = 0.02  # seconds a SQLite read may hold the worker before others get a turn
SQLITE_PROGRESS_OPS = 10000  # virtual machine steps between two looks at the time


def _yield_during_reads(dbapi_conn, record):
    """SQLite runs in this thread and blocks gevent's hub while it works: a long read (a
    1,000,000-line download, a search scanning unindexed lines) froze every stream of the
    worker for seconds. Its progress handler lets other greenlets run every SQLITE_SLICE
    while a statement runs outside a transaction (reads; never while this connection
    holds the write lock, which another greenlet's write would then wait on in vain).
    An exception thrown into the read while it waits (a ``gevent.Timeout``, a kill)
    interrupts the statement and is raised again from it (``_reraise_interrupt``)."""
    import time

    import gevent
    last = [time.monotonic()]

    def progress():
        now = time.monotonic()
        if (now - last[0] >= SQLITE_SLICE and not dbapi_conn.in_transaction
                and not record.info.get("committing")):
            try:
                gevent.sleep(0.0001)  # a timer, so that the loop polls sockets too
            except BaseException as exc:
                record.info["interrupted_by"] = exc
                return 1
            last[0] = time.monotonic()
        return 0

    dbapi_conn.set_progress_handler(progress, SQLITE_PROGRESS_OPS)


def _commit_whole(do_commit):
    """The dialect's ``do_commit``, with the connection marked (in its pool record's
    ``info``, as ``interrupted_by``) while it commits. SQLite leaves its transaction when
    COMMIT starts, and still holds the write lock through it: a commit that flushes the
    search index's pending terms runs statements of its own there, and the progress
    handler yielded in them. A greenlet that wrote meanwhile (the runner's heartbeat)
    waited SQLite's busy timeout in C, holding the worker: 10 s in which every batch was
    answered 503."""
    def commit(dbapi_conn):  # (SQLAlchemy's proxy of the pooled connection)
        dbapi_conn.info["committing"] = True
        try:
            do_commit(dbapi_conn)
        finally:
            dbapi_conn.info["committing"] = False
    return commit


def _reraise_interrupt(context):
    """``handle_error``: a SQLite statement interrupted by its progress handler raises
    what interrupted it (see ``_yield_during_reads``)."""
    conn = context.connection
    if conn is not None and not conn.invalidated:
        exc = conn.info.pop("interrupted_by", None)
        if exc is not None:
            raise exc


def _ping(dbapi_conn):
    """The pool's pre-ping on PostgreSQL. SQLAlchemy's turns psycopg's autocommit back off
    in a ``finally``: when a greenlet is killed, or a ``gevent.Timeout`` fires, while the
    ping waits, the connection is still busy, psycopg refuses the change, and the kill
    arrives as a ``ProgrammingError`` that the background loops catch as a database error
    and retry (a closed app's job runner went on). Here autocommit is set back only after
    an answer; an interrupt stays itself and the pool drops the connection it cut off."""
    before = dbapi_conn.autocommit
    dbapi_conn.autocommit = True  # psycopg 3: a flag for the next statement, no round trip
    with dbapi_conn.cursor() as cur:
        cur.execute("SELECT 1")
    dbapi_conn.autocommit = before
    return True


def create_app(config=None):
    import sqlalchemy as sa
    from flask import Flask

    from .config import Config
    from .migrate import init_db
    from .models import db
    from .startup import log_to_stderr, warn_if_cannot_stream
    log_to_stderr()  # Quaero's warnings and errors on stderr too, not only in its service log
    warn_if_cannot_stream()  # under gunicorn's sync worker: says so, naming -k gevent
    # templates/ and static/ are the package's (in a checkout, links to the repository's
    # folders; in a wheel, copies). The instance folder is Flask's choice: the checkout's
    # instance/, or <prefix>/var/quaero-instance for an installed package.
    app = Flask(__name__, template_folder=os.path.join(PACKAGE_DIR, "templates"),
                static_folder=os.path.join(PACKAGE_DIR, "static"))
    if config and config.get("INSTANCE_PATH"):
        app.instance_path = config["INSTANCE_PATH"]
    os.makedirs(app.instance_path, exist_ok=True)
    app.config.from_object(Config(app.instance_path))
    app.config.update(config or {})
    app.jinja_env.globals["quaero_version"] = __version__  # the pages' footer
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        # connect_timeout: a server that accepts but does not answer fails the connect
        app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {
            "pool_pre_ping": True, "pool_size": 5, "max_overflow": 15, "pool_timeout": 10,
            "connect_args": {"connect_timeout": 5}}

    db.init_app(app)
    with app.app_context():
        engine = db.engine
    if engine.dialect.name == "sqlite":
        _sqlite_plain_binds()
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        sa.event.listen(engine, "handle_error", _reraise_interrupt)
        engine.dialect.do_commit = _commit_whole(engine.dialect.do_commit)
    else:
        engine.dialect.do_ping = _ping
    init_db(engine)  # Flask-Migrate's `flask --app wsgi db ...`: quaero/wsgi.py adds it

    app.extensions["quaero"] = Quaero(app, engine)

    from . import errors, web
    errors.init_app(app)
    web.init_app(app)

    return app
