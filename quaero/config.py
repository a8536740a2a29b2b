"""Configuration: defaults, overridden by a TOML file (``QUAERO_CONFIG``), overridden by
``QUAERO_*`` environment variables.

The file holds any setting by its environment name (``QUAERO_PORT = 5077``); a key that is
not a setting, or a value of the wrong kind, stops the start with one line naming them
(:class:`ConfigError`). Light: ``quaero serve`` checks the file before the server starts.
"""
import collections
import os
from datetime import timedelta
import tomllib

# Every setting, by kind: what the file may hold, and how a value is checked.
SETTINGS = {
    **dict.fromkeys(("QUAERO_HOST", "QUAERO_DATABASE_URL", "QUAERO_REDIS_URL",
                     "QUAERO_REDIS_CHANNEL", "QUAERO_API_TOKEN", "QUAERO_METRICS_TOKEN",
                     "QUAERO_SECRET_KEY", "QUAERO_JOBS_DIR", "QUAERO_ACCESS_LOG",
                     "QUAERO_URL", "QUAERO_ARCHIVE_DIR", "QUAERO_ALERTS_DIR",
                     "QUAERO_SMTP_FROM", "QUAERO_OIDC_CLIENT_ID", "QUAERO_OIDC_CLIENT_SECRET",
                     "QUAERO_OIDC_NAME", "QUAERO_OIDC_SCOPES", "QUAERO_OIDC_ROLES_CLAIM",
                     "QUAERO_OIDC_ADMIN_GROUPS", "QUAERO_OIDC_OPERATE_GROUPS",
                     "QUAERO_OIDC_READ_GROUPS"), "text"),
    "QUAERO_PUBLIC_URL": "http URL",
    "QUAERO_OIDC_ISSUER": "OIDC issuer",
    "QUAERO_OIDC_ALLOW": "OIDC allow-list",
    "QUAERO_SMTP_URL": "SMTP URL",
    "QUAERO_LOG_LEVEL": ("debug", "info", "warning", "error", "critical"),
    "QUAERO_PORT": "port",
    **dict.fromkeys(("QUAERO_WORKERS",), "positive integer"),
    **dict.fromkeys(("QUAERO_WORKER_CONNECTIONS", "QUAERO_MAX_RUNNING", "QUAERO_MAX_STREAMS",
                     "QUAERO_STREAM_LIFETIME", "QUAERO_STREAM_BUFFER_BYTES",
                     "QUAERO_MAX_LINES_PER_JOB", "QUAERO_LOG_BUFFER_LINES",
                     "QUAERO_MIN_FREE_BYTES", "QUAERO_MAX_DB_BYTES",
                     "QUAERO_MAX_BODY_BYTES"), "integer"),
    **dict.fromkeys(("QUAERO_KILL_GRACE", "QUAERO_RUNNER_POLL", "QUAERO_RUNNER_HEARTBEAT",
                     "QUAERO_RUNNER_STALE", "QUAERO_STREAM_RETRY_SCALE",
                     "QUAERO_STREAM_STALL_SECONDS", "QUAERO_PING_INTERVAL",
                     "QUAERO_BATCH_INTERVAL", "QUAERO_WATCH_INTERVAL", "QUAERO_RETENTION_DAYS",
                     "QUAERO_PRUNE_INTERVAL", "QUAERO_INGEST_TIMEOUT", "QUAERO_DB_TIMEOUT",
                     "QUAERO_SEAL_AFTER",
                     "QUAERO_FLUSH_TIMEOUT", "QUAERO_SESSION_DAYS"), "number"),
    **dict.fromkeys(("QUAERO_CAPTURE_ROOT_LOGGER", "QUAERO_OIDC_PROVIDER_LOGOUT"), "boolean"),
    "QUAERO_TRACE_URL": "trace URL",
}
_TRUE, _FALSE = ("1", "true", "yes"), ("", "0", "false", "no")

# Retention is on unless turned off (0): a disk that simply fills is the worse default.
RETENTION_DAYS = 30            # finished jobs and service lines older than this go
MAX_DB_BYTES = 10 << 30        # the database's size budget (10 GiB)
MIN_FREE_BYTES = 64 << 20      # SQLite: free space kept on the database's volume


class ConfigError(ValueError):
    """Settings that cannot be used; its message is one line naming each of them."""


def _problem(name, value):
    """Why ``value`` (text) is no good for setting ``name``, or None (empty is unset)."""
    kind = SETTINGS[name]
    if value == "":
        return None
    try:
        if kind == "port" and not 0 <= int(value) <= 65535:
            return "is not a port number"
        if kind == "positive integer" and int(value) < 1:
            return "is not a positive integer"
        if kind == "integer":
            int(value)
        if kind == "number":
            float(value)
    except ValueError:
        return f"is not {'a number' if kind == 'number' else 'an integer'}"
    if kind == "boolean" and value.lower() not in _TRUE + _FALSE:
        return "is not true or false"
    if kind == "trace URL" and not (value.lower().startswith(("http://", "https://"))
                                    and "{trace_id}" in value):
        return "is not an http(s) address with {trace_id} in it"
    if kind == "http URL" and not value.lower().startswith(("http://", "https://")):
        return "is not an http(s) address"
    if kind == "SMTP URL" and not value.lower().startswith(("smtp://", "smtp+starttls://",
                                                           "smtps://")):
        return "is not an smtp://, smtp+starttls:// or smtps:// address"
    if kind == "OIDC issuer":
        from .oidc import issuer_problem
        return issuer_problem(value)
    if kind == "OIDC allow-list":
        from .oidc import parse_allow
        try:
            parse_allow(value)
        except ValueError as exc:
            return f"has a bad entry ({exc})"
    if isinstance(kind, tuple) and value.lower() not in kind:
        return "is not one of " + ", ".join(kind)
    return None


def _as_text(value):
    """A TOML value as the environment would give it."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise TypeError


def file_settings(path=None):
    """The settings of the TOML file ``path`` (default: ``QUAERO_CONFIG``, none if unset),
    as text; :class:`ConfigError` names every key and value that is no good."""
    path = path or os.environ.get("QUAERO_CONFIG")
    if not path:
        return {}
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not TOML: {exc}") from None
    settings, problems = {}, []
    for key, value in data.items():
        if key not in SETTINGS:
            problems.append(f"{key} is not a setting")
            continue
        try:
            settings[key] = _as_text(value)
        except TypeError:
            problems.append(f"{key} = {value!r} is not a single value")
            continue
        why = _problem(key, settings[key])
        if why:
            problems.append(f"{key} = {value!r} {why}")
    if problems:
        raise ConfigError(f"config file {path}: " + "; ".join(problems))
    return settings


def environment():
    """Where settings are read: the environment, over the config file's settings."""
    return collections.ChainMap(os.environ, file_settings())


def check_settings():
    """:class:`ConfigError` unless the config file and every setting in the environment
    are good; returns :func:`environment`."""
    env = environment()
    problems = [f"{name}={os.environ[name]!r} {why}" for name in SETTINGS
                if name in os.environ and (why := _problem(name, os.environ[name]))]
    if problems:
        raise ConfigError("environment: " + "; ".join(problems))
    return env


def export_file_settings():
    """Put the config file's settings into ``os.environ`` where it has none, for readers of
    the environment itself (gunicorn.conf.py, and the workers it forks)."""
    for name, value in check_settings().maps[1].items():
        os.environ.setdefault(name, value)


def retention_settings(env):
    """``(retention days, size budget in bytes, free-space floor in bytes, archive folder
    or None)`` as ``env`` (a mapping of settings, as text) sets them; each 0 is off."""
    def number(name, default, kind):
        value = env.get(name)
        return kind(value) if value not in (None, "") else default
    return (number("QUAERO_RETENTION_DAYS", RETENTION_DAYS, float),
            max(number("QUAERO_MAX_DB_BYTES", MAX_DB_BYTES, int), 0),
            max(number("QUAERO_MIN_FREE_BYTES", MIN_FREE_BYTES, int), 0),
            env.get("QUAERO_ARCHIVE_DIR") or None)


def alert_settings(env):
    """``(alerts folder, public URL, SMTP URL, SMTP sender)`` as ``env`` sets them: the
    folder of rule and destination files; where links in notifications point (unset: the
    host and port served); the mail server of e-mail destinations and its sender."""
    host = env.get("QUAERO_HOST") or "127.0.0.1"
    if host in ("0.0.0.0", "::"):   # every interface: this host's name
        import socket
        host = socket.gethostname()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    served = f"http://{host}:{env.get('QUAERO_PORT') or 5000}"
    return (env.get("QUAERO_ALERTS_DIR") or "alerts",
            (env.get("QUAERO_PUBLIC_URL") or served).rstrip("/"),
            env.get("QUAERO_SMTP_URL") or None, env.get("QUAERO_SMTP_FROM") or None)


def oidc_settings(env):
    """The OpenID Connect sign-in's settings as ``env`` sets them (``QUAERO_OIDC_*``, see
    quaero/oidc.py), or None when ``QUAERO_OIDC_ISSUER`` is not set; :class:`ConfigError`
    when it is set without its client or without any rule giving a role (nobody could
    sign in)."""
    issuer = (env.get("QUAERO_OIDC_ISSUER") or "").strip()   # as the provider writes it
    if not issuer:
        return None
    from .oidc import RoleRules
    missing = [n for n in ("QUAERO_OIDC_CLIENT_ID", "QUAERO_OIDC_CLIENT_SECRET")
               if not env.get(n)]
    if missing:
        raise ConfigError(f"QUAERO_OIDC_ISSUER is set without {' and '.join(missing)}")
    rules = RoleRules.from_settings(
        env.get("QUAERO_OIDC_ROLES_CLAIM"), env.get("QUAERO_OIDC_ADMIN_GROUPS"),
        env.get("QUAERO_OIDC_OPERATE_GROUPS"), env.get("QUAERO_OIDC_READ_GROUPS"),
        env.get("QUAERO_OIDC_ALLOW"))
    if rules.empty:
        raise ConfigError("QUAERO_OIDC_ISSUER is set but no one would get a role: set "
                          "QUAERO_OIDC_ADMIN_GROUPS, QUAERO_OIDC_OPERATE_GROUPS, "
                          "QUAERO_OIDC_READ_GROUPS or QUAERO_OIDC_ALLOW")
    from .oidc import provider_name
    return {"issuer": issuer, "client_id": env["QUAERO_OIDC_CLIENT_ID"],
            "client_secret": env["QUAERO_OIDC_CLIENT_SECRET"],
            "name": env.get("QUAERO_OIDC_NAME") or provider_name(issuer),
            "scopes": env.get("QUAERO_OIDC_SCOPES") or "openid email profile",
            "rules": rules,
            "provider_logout": (env.get("QUAERO_OIDC_PROVIDER_LOGOUT") or "1").lower()
            in _TRUE,
            # the redirect URI's base: where browsers reach Quaero (unset: as they asked)
            "public_url": (env.get("QUAERO_PUBLIC_URL") or "").rstrip("/") or None}


class Config:
    """Settings read once, when the app is created."""

    def __init__(self, instance_path):
        env = check_settings()

        def _int(name, default):
            value = env.get(name)
            return int(value) if value not in (None, "") else default

        db_url = env.get("QUAERO_DATABASE_URL") or (
            "sqlite:///" + os.path.join(instance_path, "quaero.db")
        )
        self.SQLALCHEMY_DATABASE_URI = db_url
        self.QUAERO_REDIS_URL = env.get("QUAERO_REDIS_URL") or None
        # the bus's Redis channel; unset: one derived from the database's own deployment id,
        # so deployments sharing a Redis never see each other's lines
        self.QUAERO_REDIS_CHANNEL = env.get("QUAERO_REDIS_CHANNEL") or None
        self.QUAERO_API_TOKEN = env.get("QUAERO_API_TOKEN") or None
        # /metrics needs this (or the API token) as a Bearer token when either is set
        self.QUAERO_METRICS_TOKEN = env.get("QUAERO_METRICS_TOKEN") or None
        self.QUAERO_JOBS_DIR = env.get("QUAERO_JOBS_DIR", "jobs")
        (self.QUAERO_ALERTS_DIR, self.QUAERO_PUBLIC_URL, self.QUAERO_SMTP_URL,
         self.QUAERO_SMTP_FROM) = alert_settings(env)
        self.QUAERO_MAX_RUNNING = _int("QUAERO_MAX_RUNNING", 4)
        # Runner: SIGTERM-to-SIGKILL grace on cancel, how often it looks for pending jobs,
        # its heartbeat, and when another process's running job counts as abandoned
        self.QUAERO_KILL_GRACE = float(env.get("QUAERO_KILL_GRACE", "5"))
        self.QUAERO_RUNNER_POLL = float(env.get("QUAERO_RUNNER_POLL", "1"))
        self.QUAERO_RUNNER_HEARTBEAT = float(env.get("QUAERO_RUNNER_HEARTBEAT", "5"))
        self.QUAERO_RUNNER_STALE = float(env.get("QUAERO_RUNNER_STALE", "30"))
        # Streams
        self.QUAERO_MAX_STREAMS = _int("QUAERO_MAX_STREAMS", 10000)
        # the stream cap leaves a reserve of the worker's connections (gunicorn's default
        # 1000 when run without gunicorn.conf.py; post_worker_init reads gunicorn's own)
        self.QUAERO_WORKER_CONNECTIONS = _int("QUAERO_WORKER_CONNECTIONS", 1000)
        # scales the "retry later" delays of refused streams (tests: 0.1)
        self.QUAERO_STREAM_RETRY_SCALE = float(env.get("QUAERO_STREAM_RETRY_SCALE") or 1)
        self.QUAERO_STREAM_LIFETIME = _int("QUAERO_STREAM_LIFETIME", 1800)  # seconds
        self.QUAERO_STREAM_BUFFER_BYTES = _int("QUAERO_STREAM_BUFFER_BYTES", 4 << 20)
        # a stream whose client's socket takes nothing for this long is dropped (it resumes)
        self.QUAERO_STREAM_STALL_SECONDS = float(env.get("QUAERO_STREAM_STALL_SECONDS")
                                                 or 10)
        self.QUAERO_PING_INTERVAL = float(env.get("QUAERO_PING_INTERVAL", "5"))
        self.QUAERO_BATCH_INTERVAL = float(env.get("QUAERO_BATCH_INTERVAL", "0.15"))
        # How often each process reads the database for lines and job changes made by
        # other processes (what keeps streams complete without Redis, or while it is down)
        self.QUAERO_WATCH_INTERVAL = float(env.get("QUAERO_WATCH_INTERVAL", "0.5"))
        # Retention (quaero.retention), each 0 = off: an age in days, a size budget for the
        # database, the free space kept on its volume (ingest answers 507 below it), and
        # where finished jobs are archived before they are pruned (unset: not archived)
        (self.QUAERO_RETENTION_DAYS, self.QUAERO_MAX_DB_BYTES, self.QUAERO_MIN_FREE_BYTES,
         self.QUAERO_ARCHIVE_DIR) = retention_settings(env)
        self.QUAERO_MAX_LINES_PER_JOB = _int("QUAERO_MAX_LINES_PER_JOB", 0)
        self.QUAERO_PRUNE_INTERVAL = float(env.get("QUAERO_PRUNE_INTERVAL", "60"))
        # PostgreSQL: seconds after a job finished when its plain lines move into
        # compressed blocks (quaero.sealing); 0 = never
        self.QUAERO_SEAL_AFTER = float(env.get("QUAERO_SEAL_AFTER", "3600"))
        # Service log: also capture the root logger's records
        self.QUAERO_CAPTURE_ROOT_LOGGER = env.get("QUAERO_CAPTURE_ROOT_LOGGER", "").lower() in _TRUE
        # Lines from Quaero's own logging and job steps kept while the database is away;
        # beyond this they are dropped and counted (quaero_service_log_lines_dropped_total)
        self.QUAERO_LOG_BUFFER_LINES = _int("QUAERO_LOG_BUFFER_LINES", 10000)
        # An acknowledged write (POST /api/logs, /v1/logs) is committed or refused with 503
        # within this many seconds, and a refused one is never committed later
        self.QUAERO_INGEST_TIMEOUT = float(env.get("QUAERO_INGEST_TIMEOUT") or 8)
        # Reads that wait longer than this for the database answer 503 (/healthz: 1.5 s)
        self.QUAERO_DB_TIMEOUT = float(env.get("QUAERO_DB_TIMEOUT") or 10)
        # the pages link a line's trace id here: an http(s) address with {trace_id} in it
        # (https://jaeger.example/trace/{trace_id}); unset: no links
        self.QUAERO_TRACE_URL = env.get("QUAERO_TRACE_URL") or None
        # the session's signing key; unset: derived from the API token (web.auth), else random
        self.QUAERO_SECRET_KEY = env.get("QUAERO_SECRET_KEY") or None
        self.SECRET_KEY = self.QUAERO_SECRET_KEY or os.urandom(32).hex()
        # a sign-in lasts this long (its server-side session and its cookie; web.auth)
        self.QUAERO_SESSION_DAYS = float(env.get("QUAERO_SESSION_DAYS") or 7)
        self.PERMANENT_SESSION_LIFETIME = timedelta(days=self.QUAERO_SESSION_DAYS)
        # people sign in with OpenID Connect (web.oidc): a dict of its settings, or None
        self.OIDC = oidc_settings(env)
        # Request bodies: 10,000 lines of 64 KiB is the contract's maximum batch,
        # but a body that large is refused before parsing.
        self.MAX_CONTENT_LENGTH = _int("QUAERO_MAX_BODY_BYTES", 32 << 20)
        self.SQLALCHEMY_ENGINE_OPTIONS = {"pool_pre_ping": True}
