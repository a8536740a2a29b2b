"""Quaero: a self-hosted live log service for jobs and services.

The server's modules are imported inside ``create_app`` and ``Quaero``, not here: an
application that only sends its logs (``import quaero.client``) must not load Flask,
SQLAlchemy or gevent."""
import logging
import os

log = logging.getLogger("quaero")


class Quaero:
    """Per-app shared state, kept in ``app.extensions["quaero"]``."""

    def __init__(self, app, engine):
        from .bus import LocalBus, RedisBus
        from .ingest import Ingestor
        from .metrics import Metrics
        from .retention import Pruner
        from .servicelog import IngestHandler
        self.app = app
        self.engine = engine
        self.metrics = Metrics()
        redis_url = app.config["QUAERO_REDIS_URL"]
        self.bus = RedisBus(redis_url) if redis_url else LocalBus()
        self.ingestor = Ingestor(engine, self.bus, self.metrics,
                                 app.config["QUAERO_LOG_BUFFER_LINES"])
        self.runner = None
        self.hub = None
        self.pruner = Pruner(engine, app.config["QUAERO_RETENTION_DAYS"],
                             app.config["QUAERO_MAX_LINES_PER_JOB"],
                             app.config["QUAERO_PRUNE_INTERVAL"])
        self.log_handler = IngestHandler(self.ingestor)
        self._loggers = [logging.getLogger("quaero")]
        if app.config["QUAERO_CAPTURE_ROOT_LOGGER"]:
            self._loggers.append(logging.getLogger())
        for logger in self._loggers:
            logger.addHandler(self.log_handler)
            if logger.level == logging.NOTSET or logger.level > logging.INFO:
                logger.setLevel(logging.INFO)

    def shutdown(self):
        """The process is stopping: close streams; in-flight ingest still commits."""
        if self.hub is not None:
            self.hub.shutdown()

    def close(self):
        self.pruner.stopped = True
        for logger in self._loggers:
            logger.removeHandler(self.log_handler)
        if self.hub is not None:
            self.hub.close()
        if self.runner is not None:
            self.runner.close()
        self.engine.dispose()


def _sqlite_pragmas(dbapi_conn, _record):
    cur = dbapi_conn.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON",
                   "busy_timeout=10000"):
        cur.execute("PRAGMA " + pragma)
    cur.close()
    from .models import register_sqlite_functions
    register_sqlite_functions(dbapi_conn)


def create_app(config=None):
    import sqlalchemy as sa
    from flask import Flask

    from .config import Config
    from .models import db, init_db
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    app = Flask(__name__, instance_path=os.path.join(root, "instance"),
                template_folder=os.path.join(root, "templates"),
                static_folder=os.path.join(root, "static"))
    if config and config.get("INSTANCE_PATH"):
        app.instance_path = config["INSTANCE_PATH"]
    os.makedirs(app.instance_path, exist_ok=True)
    app.config.from_object(Config(app.instance_path))
    app.config.update(config or {})
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {
            "pool_pre_ping": True, "pool_size": 5, "max_overflow": 15, "pool_timeout": 10}

    db.init_app(app)
    with app.app_context():
        engine = db.engine
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    init_db(engine)
    from flask_migrate import Migrate
    from .migrate import MIGRATIONS
    Migrate(app, db, directory=MIGRATIONS)  # `flask --app wsgi db migrate` for new revisions

    app.extensions["quaero"] = Quaero(app, engine)
    from .runner import Runner
    app.extensions["quaero"].runner = Runner(app, app.extensions["quaero"])

    from . import errors, web
    errors.init_app(app)
    web.init_app(app)

    @app.before_request
    def _background_work():
        app.extensions["quaero"].pruner.ensure_started()
        app.extensions["quaero"].runner.ensure_started()
    return app
