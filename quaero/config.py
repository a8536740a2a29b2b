"""Configuration: defaults, overridden by ``QUAERO_*`` environment variables."""
import os


def _int(name, default):
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


class Config:
    """Settings read once, when the app is created."""

    def __init__(self, instance_path):
        db_url = os.environ.get("QUAERO_DATABASE_URL") or (
            "sqlite:///" + os.path.join(instance_path, "quaero.db")
        )
        self.SQLALCHEMY_DATABASE_URI = db_url
        self.QUAERO_REDIS_URL = os.environ.get("QUAERO_REDIS_URL") or None
        # the bus's Redis channel; unset: one derived from the database's own deployment id,
        # so deployments sharing a Redis never see each other's lines
        self.QUAERO_REDIS_CHANNEL = os.environ.get("QUAERO_REDIS_CHANNEL") or None
        self.QUAERO_API_TOKEN = os.environ.get("QUAERO_API_TOKEN") or None
        # /metrics needs this (or the API token) as a Bearer token when either is set
        self.QUAERO_METRICS_TOKEN = os.environ.get("QUAERO_METRICS_TOKEN") or None
        self.QUAERO_JOBS_DIR = os.environ.get("QUAERO_JOBS_DIR", "jobs")
        self.QUAERO_MAX_RUNNING = _int("QUAERO_MAX_RUNNING", 4)
        # Runner: SIGTERM-to-SIGKILL grace on cancel, how often it looks for pending jobs,
        # its heartbeat, and when another process's running job counts as abandoned
        self.QUAERO_KILL_GRACE = float(os.environ.get("QUAERO_KILL_GRACE", "5"))
        self.QUAERO_RUNNER_POLL = float(os.environ.get("QUAERO_RUNNER_POLL", "1"))
        self.QUAERO_RUNNER_HEARTBEAT = float(os.environ.get("QUAERO_RUNNER_HEARTBEAT", "5"))
        self.QUAERO_RUNNER_STALE = float(os.environ.get("QUAERO_RUNNER_STALE", "30"))
        # Streams
        self.QUAERO_MAX_STREAMS = _int("QUAERO_MAX_STREAMS", 10000)
        # the stream cap leaves a reserve of the worker's connections (gunicorn's default
        # 1000 when run without gunicorn.conf.py; post_worker_init reads gunicorn's own)
        self.QUAERO_WORKER_CONNECTIONS = _int("QUAERO_WORKER_CONNECTIONS", 1000)
        # scales the "retry later" delays of refused streams (tests: 0.1)
        self.QUAERO_STREAM_RETRY_SCALE = float(os.environ.get("QUAERO_STREAM_RETRY_SCALE") or 1)
        self.QUAERO_STREAM_LIFETIME = _int("QUAERO_STREAM_LIFETIME", 1800)  # seconds
        self.QUAERO_STREAM_BUFFER_BYTES = _int("QUAERO_STREAM_BUFFER_BYTES", 4 << 20)
        # a stream whose client's socket takes nothing for this long is dropped (it resumes)
        self.QUAERO_STREAM_STALL_SECONDS = float(os.environ.get("QUAERO_STREAM_STALL_SECONDS")
                                                 or 10)
        self.QUAERO_PING_INTERVAL = float(os.environ.get("QUAERO_PING_INTERVAL", "5"))
        self.QUAERO_BATCH_INTERVAL = float(os.environ.get("QUAERO_BATCH_INTERVAL", "0.15"))
        # How often each process reads the database for lines and job changes made by
        # other processes (what keeps streams complete without Redis, or while it is down)
        self.QUAERO_WATCH_INTERVAL = float(os.environ.get("QUAERO_WATCH_INTERVAL", "0.5"))
        # Retention (0: keep everything)
        self.QUAERO_RETENTION_DAYS = float(os.environ.get("QUAERO_RETENTION_DAYS", "0"))
        self.QUAERO_MAX_LINES_PER_JOB = _int("QUAERO_MAX_LINES_PER_JOB", 0)
        self.QUAERO_PRUNE_INTERVAL = float(os.environ.get("QUAERO_PRUNE_INTERVAL", "60"))
        # Service log: also capture the root logger's records
        self.QUAERO_CAPTURE_ROOT_LOGGER = os.environ.get("QUAERO_CAPTURE_ROOT_LOGGER", "") in (
            "1", "true", "yes")
        # Lines from Quaero's own logging and job steps kept while the database is away;
        # beyond this they are dropped and counted (quaero_service_log_lines_dropped_total)
        self.QUAERO_LOG_BUFFER_LINES = _int("QUAERO_LOG_BUFFER_LINES", 10000)
        # An acknowledged write (POST /api/logs, /v1/logs) is committed or refused with 503
        # within this many seconds, and a refused one is never committed later
        self.QUAERO_INGEST_TIMEOUT = float(os.environ.get("QUAERO_INGEST_TIMEOUT") or 8)
        # Reads that wait longer than this for the database answer 503 (/healthz: 1.5 s)
        self.QUAERO_DB_TIMEOUT = float(os.environ.get("QUAERO_DB_TIMEOUT") or 10)
        # SQLite: ingest answers 507 while the database's volume has less free space
        self.QUAERO_MIN_FREE_BYTES = _int("QUAERO_MIN_FREE_BYTES", 64 << 20)
        self.SECRET_KEY = os.environ.get("QUAERO_SECRET_KEY") or os.urandom(32).hex()
        # Request bodies: 10,000 lines of 64 KiB is the contract's maximum batch,
        # but a body that large is refused before parsing.
        self.MAX_CONTENT_LENGTH = _int("QUAERO_MAX_BODY_BYTES", 32 << 20)
        self.SQLALCHEMY_ENGINE_OPTIONS = {"pool_pre_ping": True}
