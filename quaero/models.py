"""Tables and the one vocabulary: levels, statuses, payload shapes (the reads are in
``queries.py``, the one write path in ``ingest.py``)."""
import uuid
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase

from .levels import LEVEL_NAMES, LEVELS  # noqa: F401  (re-exported: the one level vocabulary)
from .levels import WARN as RARE_LEVEL  # the level index holds lines at this level and above

LEVEL_ALIASES = {"warning": "warn"}
# a level's name or alias (lowercase) to its number
LEVEL_CODES = {**LEVELS, **{alias: LEVELS[name] for alias, name in LEVEL_ALIASES.items()}}

JOB_STATUSES = ("pending", "running", "completed", "failed", "cancelled")
FINISHED = frozenset(("completed", "failed", "cancelled"))
ENDED = FINISHED | {"deleted"}   # a job that will have no more lines: finished or gone
STEP_STATUSES = JOB_STATUSES + ("skipped",)
MAX_STEP_NAME = 200


def step_name_problem(name):
    """Why ``name`` cannot be a step's name, or None. A step is addressed in a URL path
    (``PATCH /api/jobs/<id>/steps/<name>``): a ``/`` would split it, and clients resolve
    ``.`` and ``..`` away before sending, so such a step could never be changed."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_STEP_NAME:
        return f"a step name must be 1 to {MAX_STEP_NAME} characters"
    if "/" in name:
        return f"step name {name!r} contains '/'"
    if name in (".", ".."):
        return f"step name {name!r} is not allowed"
    return None

# Counter keys in ``line_counters``: one per job (its id), the service log, and the
# global id allocator. The id row is updated first-to-last inside every ingest
# transaction; its row lock serialises writers, so ids become visible in commit order.
SERVICE_KEY = "service"
ID_KEY = "__id__"
SEARCH_KEY = "__search__"  # the last line id in the search index (searchindex.index_behind)
DEPLOYMENT_KEY = "__deployment__"  # value: this database's random id (the bus channel)
JOBS_KEY = "__jobs__"  # value: the last job ``seq`` handed out


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class EpochMillis(sa.types.TypeDecorator):
    """A naive UTC datetime kept as whole milliseconds since 1970 (SQLite's line timestamps:
    6 bytes where the text form took 26; every answer writes milliseconds anyway). In SQL,
    ``sa.type_coerce(col, sa.BigInteger)`` is the number itself."""
    impl = sa.BigInteger
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else to_millis(value)

    def process_result_value(self, value, dialect):
        return None if value is None else from_millis(value)


class HexBytes(sa.types.TypeDecorator):
    """Bytes in the database, lowercase hex in Python (trace and span ids: 16 and 8 bytes
    where their hex took 33 and 17)."""
    impl = sa.LargeBinary
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else bytes.fromhex(value)

    def process_result_value(self, value, dialect):
        return None if value is None else bytes(value).hex()


_EPOCH = datetime(1970, 1, 1)
_MS = timedelta(milliseconds=1)


def to_millis(dt):
    return (dt - _EPOCH) // _MS


def from_millis(ms):
    return _EPOCH + ms * _MS


def utcnow():
    return datetime.now(timezone.utc).replace(tzinfo=None)


def new_id():
    return uuid.uuid4().hex[:16]


class Job(db.Model):
    __tablename__ = "jobs"
    id = sa.Column(sa.String(32), primary_key=True, default=new_id)
    # The job's number, handed out in creation order (``JOBS_KEY``): its lines refer to it
    # (``log_entries.job_seq``), a few bytes where the id took 17 in every row and index.
    seq = sa.Column(sa.BigInteger, nullable=False, index=True, unique=True)
    name = sa.Column(sa.String(200), nullable=False)
    definition = sa.Column(sa.String(200), nullable=True)
    status = sa.Column(sa.String(16), nullable=False, default="pending", index=True)
    created_at = sa.Column(sa.DateTime, nullable=False, default=utcnow, index=True)
    started_at = sa.Column(sa.DateTime, nullable=True)
    finished_at = sa.Column(sa.DateTime, nullable=True)
    steps = db.relationship("Step", order_by="Step.position", cascade="all, delete-orphan",
                            lazy="selectin", back_populates="job")


class Step(db.Model):
    __tablename__ = "steps"
    __table_args__ = (sa.UniqueConstraint("job_id", "name"),)
    id = sa.Column(sa.String(32), primary_key=True, default=new_id)
    job_id = sa.Column(sa.String(32), sa.ForeignKey("jobs.id", ondelete="CASCADE"),
                       nullable=False)
    position = sa.Column(sa.Integer, nullable=False)
    name = sa.Column(sa.String(200), nullable=False)
    status = sa.Column(sa.String(16), nullable=False, default="pending")
    started_at = sa.Column(sa.DateTime, nullable=True)
    finished_at = sa.Column(sa.DateTime, nullable=True)
    job = db.relationship("Job", back_populates="steps")


class LogEntry(db.Model):
    __tablename__ = "log_entries"
    __table_args__ = (
        # last N / after X for a job or the service log (job_id IS NULL)
        sa.Index("ix_log_job_id", "job_seq", "id").ddl_if(dialect="postgresql"),
        # ... of one step
        # (PostgreSQL's: ix_log_step_key, after the class)
        # ... at warn or error (the rare levels: "info and above" reads ix_log_job_id);
        # queries._where states the index's condition for the planners to see it applies
        sa.Index("ix_log_job_level_id", "job_seq", "level", "id",
                 postgresql_where=sa.text(f"level >= {RARE_LEVEL}")).ddl_if(dialect="postgresql"),
        # SQLite: the same three without the id, which ends every SQLite index entry (the
        # rowid) in the same order (migration 0017)
        sa.Index("ix_log_job", "job_seq").ddl_if(dialect="sqlite"),
        sa.Index("ix_log_job_step", "job_seq", "step_name",  # (lines with a step: 0021)
                 sqlite_where=sa.text("step_name IS NOT NULL")).ddl_if(dialect="sqlite"),
        sa.Index("ix_log_job_level", "job_seq", "level", sqlite_where=sa.text(
            f"level >= {RARE_LEVEL}")).ddl_if(dialect="sqlite"),
        # the service log, newest first (PostgreSQL does not order (job_seq, id) by id
        # under "job_seq IS NULL")
        sa.Index("ix_log_service_id", "id", sqlite_where=sa.text("job_seq IS NULL"),
                 postgresql_where=sa.text("job_seq IS NULL")),
        # every line of a trace (PostgreSQL's GIN index of attributes is its migration's
        # alone, 0014: SQLite has none)
        sa.Index("ix_log_trace_id", "trace_id", sqlite_where=sa.text("trace_id IS NOT NULL"),
                 postgresql_where=sa.text("trace_id IS NOT NULL")),
    )
    id = sa.Column(BigId, primary_key=True, autoincrement=False)
    # the job's ``seq`` (None: the service log); readers ask by job id (``of_jobs``)
    job_seq = sa.Column(BigId, sa.ForeignKey("jobs.seq", ondelete="CASCADE"), nullable=True)
    step_name = sa.Column(sa.String(200), nullable=True)
    level = sa.Column(sa.SmallInteger, nullable=False)
    message = sa.Column(sa.Text, nullable=False)
    timestamp = sa.Column(sa.DateTime().with_variant(EpochMillis(), "sqlite"), nullable=False)
    line_number = sa.Column(sa.Integer, nullable=False)
    source = sa.Column(sa.String(200), nullable=True)  # the sending program, if it said
    # structured fields (``attributes.py``): JSON text on SQLite, JSONB on PostgreSQL (its
    # GIN index answers ``attr.`` filters); trace and span ids as their bytes
    attributes = sa.Column(sa.JSON().with_variant(JSONB(), "postgresql"), nullable=True)
    trace_id = sa.Column(HexBytes(), nullable=True)
    span_id = sa.Column(HexBytes(), nullable=True)


class LineCounter(db.Model):
    """Last value handed out: global log id, and line numbers per job / service, with
    the job's (or service log's) first and last line id: reads of a job's tail are
    bounded by them (``job_bounds``)."""
    __tablename__ = "line_counters"
    key = sa.Column(sa.String(32), primary_key=True)
    value = sa.Column(sa.BigInteger, nullable=False, default=0)
    first_id = sa.Column(sa.BigInteger, nullable=True)  # None: no line yet
    last_id = sa.Column(sa.BigInteger, nullable=True)
    job_seq = sa.Column(sa.BigInteger, nullable=True)  # a job's row: its ``seq``, for its lines


class LogCount(db.Model):
    """Lines present per (job or service, step, level): meta and log_counts read these."""
    __tablename__ = "log_counts"
    key = sa.Column(sa.String(32), primary_key=True)  # job id or SERVICE_KEY
    step_name = sa.Column(sa.String(200), primary_key=True)  # "" for none
    level = sa.Column(sa.SmallInteger, primary_key=True)
    count = sa.Column(sa.BigInteger, nullable=False, default=0)


class LogVolume(db.Model):
    """Lines per (job or service, step, level, second of their timestamp): the log-volume
    histogram reads these. Kept by the write path (``storage.write_lines``) in the same
    transaction as ``log_counts``, taken down by retention, dropped with the job."""
    __tablename__ = "log_volume"
    key = sa.Column(sa.String(32), primary_key=True)  # job id or SERVICE_KEY
    step_name = sa.Column(sa.String(200), primary_key=True)  # "" for none
    level = sa.Column(sa.SmallInteger, primary_key=True)
    second = sa.Column(sa.BigInteger, primary_key=True)  # Unix time, whole seconds
    count = sa.Column(sa.BigInteger, nullable=False)


class IdempotencyKey(db.Model):
    """An acknowledged ``POST /api/logs`` with an ``Idempotency-Key``: its body's digest and
    its answer, written in the transaction that stored its lines (``ingest``)."""
    __tablename__ = "idempotency_keys"
    key = sa.Column(sa.String(128), primary_key=True)
    digest = sa.Column(sa.String(64), nullable=False)   # sha256 of the request body
    status = sa.Column(sa.SmallInteger, nullable=False)
    response = sa.Column(sa.Text, nullable=False)         # the JSON body answered
    created_at = sa.Column(sa.DateTime, nullable=False, index=True)


log_t = LogEntry.__table__
jobs_t = Job.__table__


# PostgreSQL: a job's step as one bigint, the first column of its lines' index
# (ix_log_step_key, migration 0019): the job's seq (43 bits) and 20 bits of the step
# name's hash. An entry of (job_seq, step_name, id) is wider than two bigints, and
# PostgreSQL's B-tree splits such pages half and half when a job's steps are written one
# after another (72 bytes a line, half full); (key, id) pages fill as the job index's do
# (33). Two steps of a job may share a key: readers also test the step's name
# (queries.of_step). Written out as SQL (literals, as the index's expression has them):
# built with SQLAlchemy's operators it cost a read 0.2 ms.
STEP_KEY = "((({seq} & 8796093022207) << 20) | (hashtext({step}) & 1048575))"


def of_jobs(job_ids, t=None):
    """The condition "a line of one of ``job_ids``" (job ids, as the API names jobs);
    ``()``: a line of the service log. ``t``: the lines read (``queries.lines_of``)."""
    seq = (log_t if t is None else t).c.job_seq
    if not job_ids:
        return seq.is_(None)
    if len(job_ids) == 1:
        return seq == sa.select(jobs_t.c.seq).where(jobs_t.c.id == job_ids[0]).scalar_subquery()
    return seq.in_(sa.select(jobs_t.c.seq).where(jobs_t.c.id.in_(list(job_ids))))


# a step's lines, newest first (PostgreSQL; SQLite's is ix_log_job_step, above)
sa.Index("ix_log_step_key",
         sa.literal_column(STEP_KEY.format(seq="job_seq", step="step_name")),
         log_t.c.id).ddl_if(dialect="postgresql")


def next_job_seq(conn):
    """Hand out the next job ``seq`` in the open transaction ``conn``."""
    return conn.execute(counters_t.update().where(counters_t.c.key == JOBS_KEY)
                        .values(value=counters_t.c.value + 1)
                        .returning(counters_t.c.value)).scalar_one()
idempotency_t = IdempotencyKey.__table__
counts_t = LogCount.__table__
counters_t = LineCounter.__table__
volume_t = LogVolume.__table__


class RunnerHeartbeat(db.Model):
    """A job runner (one per process, see ``runner/leases.py``) and when it last beat."""
    __tablename__ = "runner_heartbeats"
    runner_id = sa.Column(sa.BigInteger, primary_key=True, autoincrement=False)
    beat_ms = sa.Column(sa.BigInteger, nullable=False)   # epoch milliseconds


class JobLease(db.Model):
    """The runner that claimed a running definition job."""
    __tablename__ = "job_leases"
    job_id = sa.Column(sa.String(32), sa.ForeignKey("jobs.id", ondelete="CASCADE"),
                       primary_key=True)
    runner_id = sa.Column(sa.BigInteger, nullable=False)


heartbeats_t = RunnerHeartbeat.__table__
leases_t = JobLease.__table__


class ApiKey(db.Model):
    """An API key (``access.py``): only a SHA-256 of its text is kept. A revoked key keeps
    its row (``revoked_at``), so the audit trail's names stay meaningful."""
    __tablename__ = "api_keys"
    id = sa.Column(sa.String(16), primary_key=True)
    name = sa.Column(sa.String(200), nullable=False)
    secret_hash = sa.Column(sa.String(64), nullable=False)
    scopes = sa.Column(sa.String(64), nullable=False)       # comma-separated, SCOPES order
    jobs = sa.Column(sa.String(200), nullable=True)          # job name pattern, None: all
    sources = sa.Column(sa.Text, nullable=True)   # JSON list of the sources it may send as
    created_by = sa.Column(sa.String(200), nullable=False)
    created_at = sa.Column(sa.DateTime, nullable=False)
    expires_at = sa.Column(sa.DateTime, nullable=True)
    last_used_at = sa.Column(sa.DateTime, nullable=True)    # written at most once a minute
    revoked_at = sa.Column(sa.DateTime, nullable=True)


class AuthSession(db.Model):
    """A signed-in browser: the cookie holds a random secret, this row its SHA-256, so that
    signing out (``revoked_at``) ends the session on the server and a copy of the cookie."""
    __tablename__ = "auth_sessions"
    id = sa.Column(sa.String(64), primary_key=True)          # sha256 of the cookie's secret
    subject = sa.Column(sa.String(200), nullable=False, index=True)  # "token", or a person
    role = sa.Column(sa.String(16), nullable=False)          # access.ROLES
    created_at = sa.Column(sa.DateTime, nullable=False)
    expires_at = sa.Column(sa.DateTime, nullable=False, index=True)
    revoked_at = sa.Column(sa.DateTime, nullable=True)


class LoginFailure(db.Model):
    """Failed sign-ins in the current window, per client address (``addr:…``) and per
    account (``account:…``): every worker and host counts in the same rows."""
    __tablename__ = "login_failures"
    key = sa.Column(sa.String(200), primary_key=True)
    window_start = sa.Column(sa.DateTime, nullable=False, index=True)
    count = sa.Column(sa.Integer, nullable=False)


keys_t = ApiKey.__table__
sessions_t = AuthSession.__table__
login_failures_t = LoginFailure.__table__


def deployment_id(engine):
    """This database's random id, made by ``migrate.init_db`` (one per deployment)."""
    with engine.connect() as conn:
        return conn.execute(sa.select(counters_t.c.value)
                            .where(counters_t.c.key == DEPLOYMENT_KEY)).scalar_one()


# --- formats -----------------------------------------------------------------------------

def iso(dt):
    """ISO 8601 UTC with milliseconds, as every time in the API."""
    if dt is None:
        return None
    return dt.isoformat(timespec="milliseconds") + "Z"


def line_dict(id, job_id, step_name, level, message, timestamp, line_number, source=None,
              attributes=None, trace_id=None, span_id=None, when=None):
    """A log line as every response has it; ``when``: ``timestamp`` already formatted.
    ``attributes``, ``trace_id`` and ``span_id`` are there only when the line has them."""
    line = {"id": id, "timestamp": when or iso(timestamp), "level": LEVEL_NAMES[level],
            "message": message, "job_id": job_id, "step_name": step_name,
            "line_number": line_number, "source": source}
    if attributes:
        line["attributes"] = attributes
    if trace_id is not None:
        line["trace_id"] = trace_id
    if span_id is not None:
        line["span_id"] = span_id
    return line


def step_dict(step):
    return {"id": step.id, "name": step.name, "status": step.status,
            "started_at": iso(step.started_at), "finished_at": iso(step.finished_at)}


def job_dict(job, log_counts=None):
    return {"id": job.id, "name": job.name, "definition": job.definition,
            "status": job.status, "created_at": iso(job.created_at),
            "started_at": iso(job.started_at), "finished_at": iso(job.finished_at),
            "steps": [step_dict(s) for s in job.steps],
            "log_counts": log_counts if log_counts is not None else dict.fromkeys(LEVELS, 0)}


def status_payload(job):
    """The ``status`` event: the job and its steps as they are now."""
    return {"job": {"id": job.id, "status": job.status},
            "steps": [{"id": s.id, "name": s.name, "status": s.status} for s in job.steps]}


def deleted_payload(job_id):
    """The ``status`` event of a job that no longer exists."""
    return {"job": {"id": job_id, "status": "deleted"}, "steps": []}


# --- alerts and schedules (quaero.alerts, quaero.runner.cron) -----------------------------

class AlertLease(db.Model):
    """A deployment-wide singleton's holder (``alerts.store.Lease``): the one alert
    evaluator, whatever the number of workers and hosts."""
    __tablename__ = "alert_leases"
    name = sa.Column(sa.String(64), primary_key=True)
    holder = sa.Column(sa.BigInteger, nullable=False)   # leases.runner_number of the process
    host = sa.Column(sa.String(200), nullable=False)
    pid = sa.Column(sa.Integer, nullable=False)
    expires_ms = sa.Column(sa.BigInteger, nullable=False)


class AlertState(db.Model):
    """The evaluator's checkpoint: each rule's window state, and (key ``""``) how far it
    has read lines and job ends; written in one transaction with the events it decided."""
    __tablename__ = "alert_state"
    key = sa.Column(sa.String(200), primary_key=True)
    state = sa.Column(sa.Text, nullable=False)          # JSON
    updated_ms = sa.Column(sa.BigInteger, nullable=False)


class AlertEvent(db.Model):
    """A notification decided once: ``key`` is its idempotency key (rule, window or job)."""
    __tablename__ = "alert_events"
    __table_args__ = (sa.Index("ix_alert_events_rule", "rule", "id"),)
    id = sa.Column(BigId, primary_key=True, autoincrement=True)
    key = sa.Column(sa.String(400), nullable=False, unique=True)
    rule = sa.Column(sa.String(200), nullable=False)
    state = sa.Column(sa.String(16), nullable=False)     # firing | resolved | test
    created_at = sa.Column(sa.DateTime, nullable=False, index=True)
    payload = sa.Column(sa.Text, nullable=False)        # JSON: what every destination is sent


class AlertDelivery(db.Model):
    """One event to one destination: pending, sending (its outcome unknown until written),
    delivered, retrying (``next_ms``) or failed (given up)."""
    __tablename__ = "alert_deliveries"
    __table_args__ = (sa.UniqueConstraint("event_id", "destination"),
                      sa.Index("ix_alert_deliveries_status", "status", "next_ms"))
    id = sa.Column(BigId, primary_key=True, autoincrement=True)
    event_id = sa.Column(BigId, sa.ForeignKey("alert_events.id", ondelete="CASCADE"),
                         nullable=False)
    destination = sa.Column(sa.String(200), nullable=False)
    status = sa.Column(sa.String(16), nullable=False)
    attempts = sa.Column(sa.Integer, nullable=False, default=0)
    next_ms = sa.Column(sa.BigInteger, nullable=False, default=0)
    last_error = sa.Column(sa.Text, nullable=True)
    updated_at = sa.Column(sa.DateTime, nullable=False)


class ScheduleTick(db.Model):
    """A definition's schedule tick, claimed once for the whole deployment: the primary
    key is what makes two processes never both run it."""
    __tablename__ = "schedule_ticks"
    definition = sa.Column(sa.String(200), primary_key=True)
    tick_at = sa.Column(sa.DateTime, primary_key=True)     # UTC
    schedule = sa.Column(sa.String(300), nullable=False)  # the cron expression and time zone
    outcome = sa.Column(sa.String(16), nullable=False)    # baseline|started|skipped|queued
    job_id = sa.Column(sa.String(32), nullable=True)
    claimed_at = sa.Column(sa.DateTime, nullable=False)


alert_leases_t = AlertLease.__table__
alert_state_t = AlertState.__table__
alert_events_t = AlertEvent.__table__
alert_deliveries_t = AlertDelivery.__table__
ticks_t = ScheduleTick.__table__
