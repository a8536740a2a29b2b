"""Job definitions that run on a schedule (``schedule = "*/15 * * * *"``).

The cron arithmetic is croniter's, in the definition's time zone (default UTC; daylight
saving time as croniter has it). The rest is pure too: :func:`plan` says what to do with a
definition at ``now`` given the last tick claimed for it.

Each process's :class:`ScheduleRunner` looks once a second; a tick runs once for the whole
deployment because it is claimed by inserting ``(definition, tick time)`` into
``schedule_ticks`` (its primary key): of several processes and hosts, one insert wins, in
the transaction that also creates the job. Nothing is skipped silently: after a time with
no server up, the most recent missed tick runs at once and the service log says how many
before it were missed; a tick that comes while a run of the definition is still on is
skipped (``overlap = "skip"``, said in the service log) or queued (``"queue"``: at most
one, started when the run ends). The first time a schedule is seen (or after it changed)
its latest tick is recorded without a run: a new schedule starts at its next tick.
"""
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone as dt_timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import gevent
import sqlalchemy as sa

from ..models import jobs_t, ticks_t, utcnow

log = logging.getLogger("quaero.runner")

MAX_COUNTED = 10000   # missed ticks counted one by one up to this many
ACTIVE = ("pending", "running")


def _zone(name):
    return dt_timezone.utc if name in ("UTC", "Etc/UTC") else ZoneInfo(name)


def schedule_problem(expr, tz="UTC"):
    """Why ``expr`` (5-field cron, or an ``@hourly``-style name) in time zone ``tz``
    cannot be a schedule, or None."""
    from croniter import croniter
    if not isinstance(expr, str) or not expr.strip():
        return "schedule must be a cron expression, like \"*/15 * * * *\""
    fields = expr.split()
    if expr.strip().startswith("@"):
        if expr.strip() not in ("@yearly", "@annually", "@monthly", "@weekly", "@daily",
                                "@midnight", "@hourly"):
            return f"schedule {expr!r}: not one of @yearly, @monthly, @weekly, @daily, @hourly"
    elif len(fields) != 5:
        return (f"schedule {expr!r} must have 5 fields (minute hour day-of-month month "
                "day-of-week)")
    elif not croniter.is_valid(" ".join(fields)):
        return f"schedule {expr!r} is not a valid cron expression"
    try:
        _zone(tz)
    except (ZoneInfoNotFoundError, ValueError):
        return f"timezone {tz!r} is not a known time zone (an IANA name like \"Europe/Paris\")"
    return None


def _iter(expr, tz, at):
    from croniter import croniter
    zone = _zone(tz)
    start = at.replace(tzinfo=dt_timezone.utc).astimezone(zone)
    return croniter(" ".join(expr.split()), start)


def _utc(dt):
    return dt.astimezone(dt_timezone.utc).replace(tzinfo=None, fold=0)


def latest_tick(expr, tz, now):
    """The most recent tick at or before ``now`` (naive UTC datetimes in and out). Ticks
    fall on whole minutes: the latest before the next whole second is the one."""
    start = now.replace(microsecond=0) + timedelta(seconds=1)
    return _utc(_iter(expr, tz, start).get_prev(datetime))


def next_tick(expr, tz, now):
    """The first tick after ``now`` (naive UTC)."""
    return _utc(_iter(expr, tz, now).get_next(datetime))


def count_ticks(expr, tz, after, upto, cap=MAX_COUNTED):
    """How many ticks fall strictly between ``after`` and ``upto`` (at most ``cap``)."""
    it = _iter(expr, tz, after)
    n = 0
    while n < cap:
        t = _utc(it.get_next(datetime))
        if t >= upto:
            break
        n += 1
    return n


@dataclass(frozen=True)
class Plan:
    action: str            # "baseline" (record, do not run) or "run"
    tick: object           # naive UTC datetime
    missed: int = 0        # ticks before it that no server ran


@dataclass(frozen=True)
class Started:
    definition: str
    job_id: str


def signature(definition):
    return f"{definition.schedule} {definition.timezone}"


def plan(expr, tz, now, last_tick, last_signature):
    """What to do at ``now`` for a schedule whose last claimed tick is ``last_tick``
    (claimed under ``last_signature``), or None."""
    latest = latest_tick(expr, tz, now)
    if last_tick is not None and latest <= last_tick:
        return None
    if last_tick is None or last_signature != f"{' '.join(expr.split())} {tz}":
        return Plan("baseline", latest)
    return Plan("run", latest, count_ticks(expr, tz, last_tick, latest))


def last_claims(conn, names):
    """``{definition: (tick_at, schedule)}``: the newest claimed tick of each."""
    if not names:
        return {}
    newest = (sa.select(ticks_t.c.definition, sa.func.max(ticks_t.c.tick_at).label("t"))
              .where(ticks_t.c.definition.in_(list(names))).group_by(ticks_t.c.definition)
              .subquery())
    rows = conn.execute(sa.select(ticks_t.c.definition, ticks_t.c.tick_at, ticks_t.c.schedule)
                        .join(newest, sa.and_(newest.c.definition == ticks_t.c.definition,
                                              newest.c.t == ticks_t.c.tick_at))).all()
    return {r.definition: (r.tick_at, r.schedule) for r in rows}


def claim(conn, name, tick, sig, outcome, job_id=None):
    """Insert the tick's row in the open transaction ``conn``: False when another process
    claimed it first (then the transaction is rolled back)."""
    try:
        with conn.begin_nested():
            conn.execute(ticks_t.insert().values(definition=name, tick_at=tick, schedule=sig,
                                                 outcome=outcome, job_id=job_id,
                                                 claimed_at=utcnow()))
        return True
    except sa.exc.IntegrityError:
        return False


def active_job(conn, name):
    """A pending or running job of definition ``name``: ``(id, status)`` or None."""
    return conn.execute(sa.select(jobs_t.c.id, jobs_t.c.status).where(
        jobs_t.c.definition == name, jobs_t.c.status.in_(ACTIVE)).limit(1)).first()


class ScheduleRunner:
    """This process's look at the schedules, once a second (one of the app's parts)."""

    INTERVAL = 1.0

    def __init__(self, app, state):
        self.app = app
        self.state = state
        self._closed = False
        self._failing = None

    def start(self, group):
        if not self._closed and self.app.config.get("QUAERO_DEPLOYMENT_DUTIES", True):
            group.spawn(self._loop)

    def stop(self):
        self._closed = True

    def _loop(self):
        while not self._closed and self.state.started_here():
            try:
                self.run_due(utcnow())
                if self._failing:
                    log.info("schedules: database working again")
                self._failing = None
            except Exception as exc:
                if self._failing != exc.__class__:
                    log.warning("schedules: %s: %s; retrying", exc.__class__.__name__,
                                str(exc).splitlines()[0][:200] if str(exc) else "")
                    self._failing = exc.__class__
            gevent.sleep(self.INTERVAL)

    def run_due(self, now):
        """Claim and run (or skip, or queue) every tick due at ``now``; the runs started
        (:class:`Started`)."""
        runner = self.state.runner
        defs = {d.name: d for d in runner.library.all().values() if d.schedule}
        if not defs:
            return []
        from ..models import db
        started = []
        with self.app.app_context():
            try:
                last = last_claims(db.session.connection(), defs)
                db.session.rollback()
                for d in defs.values():
                    tick, sig = last.get(d.name, (None, None))
                    p = plan(d.schedule, d.timezone, now, tick, sig)
                    if p is not None:
                        job = self._tick(d, p, tick)
                        if job is not None:
                            started.append(job)
                for d in defs.values():
                    if d.overlap == "queue":
                        job = self._start_queued(d)
                        if job is not None:
                            started.append(job)
            finally:
                db.session.rollback()
        return started

    def _tick(self, d, p, last_tick):
        from ..models import db
        runner = self.state.runner
        conn = db.session.connection()
        sig = signature(d)
        if p.action == "baseline":
            claim(conn, d.name, p.tick, sig, "baseline")
            db.session.commit()
            return None
        busy = active_job(conn, d.name)
        if busy is not None:
            queued = d.overlap == "queue" and conn.execute(sa.select(ticks_t.c.tick_at).where(
                ticks_t.c.definition == d.name, ticks_t.c.outcome == "queued").limit(1)).first() is None
            outcome = "queued" if queued else "skipped"
            if claim(conn, d.name, p.tick, sig, outcome):
                db.session.commit()
                if queued:
                    log.info("schedule: %s's run of %s is queued: job %s is still %s",
                             d.name, _at(p.tick), busy.id, busy.status)
                else:
                    log.warning("schedule: %s's run of %s was skipped: job %s is still %s%s",
                                d.name, _at(p.tick), busy.id, busy.status,
                                " and a run is queued already" if d.overlap == "queue" else "")
            db.session.rollback()
            return None
        if not claim(conn, d.name, p.tick, sig, "started"):
            db.session.rollback()
            return None
        job = Started(d.name, runner.start_job(d.name).id)   # commits the claim with the job
        self._note_job(d.name, p.tick, job.job_id)
        if p.missed:
            log.warning("schedule: %s missed %s tick%s between %s and %s while no Quaero "
                        "server was running; the latest (%s) runs now: job %s", d.name,
                        f"{p.missed}+" if p.missed >= MAX_COUNTED else p.missed,
                        "" if p.missed == 1 else "s", _at(last_tick), _at(p.tick),
                        _at(p.tick), job.job_id)
        else:
            log.info("schedule: %s's run of %s: job %s", d.name, _at(p.tick), job.job_id)
        return job

    def _start_queued(self, d):
        from ..models import db
        conn = db.session.connection()
        row = conn.execute(sa.select(ticks_t.c.tick_at).where(
            ticks_t.c.definition == d.name, ticks_t.c.outcome == "queued")
            .order_by(ticks_t.c.tick_at).limit(1)).first()
        if row is None or active_job(conn, d.name) is not None:
            db.session.rollback()
            return None
        n = conn.execute(ticks_t.update().where(
            ticks_t.c.definition == d.name, ticks_t.c.tick_at == row.tick_at,
            ticks_t.c.outcome == "queued").values(outcome="started")).rowcount
        if n != 1:
            db.session.rollback()
            return None
        job = Started(d.name, self.state.runner.start_job(d.name).id)
        self._note_job(d.name, row.tick_at, job.job_id)
        log.info("schedule: %s's queued run of %s starts: job %s", d.name, _at(row.tick_at),
                 job.job_id)
        return job

    def _note_job(self, name, tick, job_id):
        from ..models import db
        db.session.execute(ticks_t.update().where(ticks_t.c.definition == name,
                                                  ticks_t.c.tick_at == tick).values(job_id=job_id))
        db.session.commit()


def _at(dt):
    return dt.strftime("%Y-%m-%d %H:%M UTC") if dt is not None else "?"
