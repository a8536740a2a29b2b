"""The alerts' tables: the evaluator's lease, its checkpoint, events and deliveries.

Exactly one evaluator per deployment: a process holds the lease row ``alerts`` until it
expires (renewed every few seconds); another takes it when it expired, or at once when
its holder was a process of the same host that no longer exists (a worker killed with -9
is replaced within a second). Every write of the evaluator is fenced: it renews the lease
in its own transaction and gives up (:class:`LeaseLost`) when another holds it, so that an
evaluator that was paused past its lease never writes beside the new one.

A notification is an event (its idempotency key unique) and one delivery per destination,
written in the transaction that saves the rules' states and how far lines were read: a new
evaluator resumes from that checkpoint and finds the deliveries still to send."""
import json

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ..models import (alert_deliveries_t as deliveries_t, alert_events_t as events_t,
                      alert_leases_t as leases_t, alert_state_t as state_t, jobs_t, utcnow)
from ..runner.leases import epoch_ms, pid_alive, runner_number

CURSOR = ""          # alert_state's key for how far the evaluator has read
MAX_ATTEMPTS = 12    # 2 s doubling to 1 h: about 7 h of retries, then "failed"
BACKOFF_CAP_S = 3600


class LeaseLost(Exception):
    pass


def backoff_ms(attempts):
    """The wait before attempt ``attempts + 1``: 2, 4, 8 ... seconds, at most an hour."""
    return int(min(2 ** attempts, BACKOFF_CAP_S) * 1000)


class Lease:
    """A deployment-wide singleton's lease (``name``) for this process."""

    def __init__(self, engine, name, host, ttl):
        self.engine = engine
        self.name = name
        self.host = host
        self.ttl_ms = int(ttl * 1000)
        self.holder = None
        self.pid = None

    def begin(self, pid):
        self.pid = pid
        self.holder = runner_number(self.host, pid)

    def acquire(self):
        """Hold (or keep holding) the lease; whether this process holds it now."""
        now = epoch_ms()
        mine = dict(holder=self.holder, host=self.host, pid=self.pid, expires_ms=now + self.ttl_ms)
        try:
            with self.engine.begin() as conn:
                row = conn.execute(sa.select(leases_t).where(leases_t.c.name == self.name)).first()
                if row is None:
                    conn.execute(leases_t.insert().values(name=self.name, **mine))
                    return True
                if row.holder != self.holder and not (
                        row.expires_ms < now or (row.host == self.host and row.pid != self.pid
                                                 and not pid_alive(row.pid))):
                    return False
                return conn.execute(leases_t.update().where(
                    leases_t.c.name == self.name, leases_t.c.holder == row.holder,
                    leases_t.c.expires_ms == row.expires_ms).values(**mine)).rowcount == 1
        except sa.exc.IntegrityError:
            return False

    def fence(self, conn):
        """In a write transaction: renew, or :class:`LeaseLost` when another holds it."""
        n = conn.execute(leases_t.update().where(
            leases_t.c.name == self.name, leases_t.c.holder == self.holder)
            .values(expires_ms=epoch_ms() + self.ttl_ms)).rowcount
        if n != 1:
            raise LeaseLost()

    def release(self):
        if self.holder is None:
            return
        with self.engine.begin() as conn:
            conn.execute(leases_t.delete().where(leases_t.c.name == self.name,
                                                 leases_t.c.holder == self.holder))

    def who(self):
        """``{"host", "pid", "expires_in"}`` of the holder, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(leases_t).where(leases_t.c.name == self.name)).first()
        if row is None or row.expires_ms < epoch_ms():
            return None
        return {"host": row.host, "pid": row.pid}


# -- the checkpoint ------------------------------------------------------------------------

def load_states(engine):
    """``{key: state}``, the cursor's with ``saved_ms``: when it was saved."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(state_t.c.key, state_t.c.state, state_t.c.updated_ms)).all()
    out = {k: json.loads(s) for k, s, _ in rows}
    for k, _, at in rows:
        if k == CURSOR:
            out[k]["saved_ms"] = at
    return out


def save_states(conn, states):
    """Upsert ``{key: state}`` (the rules that changed, and the cursor) in one statement
    (a SELECT of the keys there, an UPDATE per rule and an INSERT cost 12 ms of CPU per
    save on PostgreSQL with 20 rules: a third of what the evaluator cost ingest; an executemany
    of the upsert cost more than this one statement)."""
    if not states:
        return
    now = epoch_ms()
    insert = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(state_t)
    rows = [{"key": k, "state": json.dumps(st, separators=(",", ":")), "updated_ms": now}
            for k, st in states.items()]
    conn.execute(insert.values(rows).on_conflict_do_update(
        index_elements=[state_t.c.key],
        set_={"state": insert.excluded.state, "updated_ms": insert.excluded.updated_ms}))


def drop_states(conn, keys):
    if keys:
        conn.execute(state_t.delete().where(state_t.c.key.in_(list(keys))))


def existing_keys(conn, keys):
    keys = list(keys)
    found = set()
    for i in range(0, len(keys), 500):
        found |= set(conn.execute(sa.select(events_t.c.key).where(
            events_t.c.key.in_(keys[i:i + 500]))).scalars())
    return found


def add_event(conn, key, rule, state, payload, destinations):
    """Record a notification and its deliveries (pending); its id, or None if ``key`` was
    recorded already."""
    if existing_keys(conn, [key]):
        return None
    now = utcnow()
    event_id = conn.execute(events_t.insert().values(
        key=key, rule=rule, state=state, created_at=now,
        payload=json.dumps(payload, separators=(",", ":"), ensure_ascii=False))
        .returning(events_t.c.id)).scalar_one()
    for name in destinations:
        conn.execute(deliveries_t.insert().values(
            event_id=event_id, destination=name, status="pending", attempts=0, next_ms=0,
            updated_at=now))
    return event_id


# -- deliveries ----------------------------------------------------------------------------

def due_deliveries(engine, exclude, limit=20):
    """Deliveries to attempt now: pending, retrying whose time came, and ``sending`` ones
    not in flight here (a stopped evaluator's: their outcome is unknown, so they go again)."""
    now = epoch_ms()
    q = (sa.select(deliveries_t.c.id, deliveries_t.c.destination, deliveries_t.c.attempts,
                   events_t.c.key, events_t.c.payload)
         .select_from(deliveries_t.join(events_t, events_t.c.id == deliveries_t.c.event_id))
         .where(sa.or_(deliveries_t.c.status.in_(("pending", "sending")),
                       sa.and_(deliveries_t.c.status == "retrying",
                               deliveries_t.c.next_ms <= now)))
         .order_by(deliveries_t.c.id).limit(limit + len(exclude)))
    with engine.connect() as conn:
        rows = conn.execute(q).all()
    return [r for r in rows if r.id not in exclude][:limit]


def mark_sending(engine, lease, delivery_id):
    with engine.begin() as conn:
        lease.fence(conn)
        conn.execute(deliveries_t.update().where(deliveries_t.c.id == delivery_id).values(
            status="sending", attempts=deliveries_t.c.attempts + 1, updated_at=utcnow()))


def mark_outcome(engine, delivery_id, attempts, error):
    """The attempt's outcome: delivered, or retrying after a backoff, or failed for good."""
    if error is None:
        values = dict(status="delivered", last_error=None)
    elif attempts >= MAX_ATTEMPTS:
        values = dict(status="failed", last_error=error)
    else:
        values = dict(status="retrying", last_error=error, next_ms=epoch_ms() + backoff_ms(attempts))
    with engine.begin() as conn:
        conn.execute(deliveries_t.update().where(deliveries_t.c.id == delivery_id)
                     .values(updated_at=utcnow(), **values))


def next_due_ms(engine):
    """When the earliest retry is due (epoch ms), or None."""
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.min(deliveries_t.c.next_ms))
                            .where(deliveries_t.c.status == "retrying")).scalar()


def prune(engine, before):
    with engine.begin() as conn:
        old = sa.select(events_t.c.id).where(events_t.c.created_at < before)
        conn.execute(deliveries_t.delete().where(deliveries_t.c.event_id.in_(old)))
        conn.execute(events_t.delete().where(events_t.c.created_at < before))


# -- what GET /api/alerts shows ------------------------------------------------------------

def rule_status(engine):
    """``{rule: {"state", "last_fired_at", "last_delivery"}}`` from the tables."""
    out = {}
    with engine.connect() as conn:
        for key, text in conn.execute(sa.select(state_t.c.key, state_t.c.state)
                                      .where(state_t.c.key != CURSOR)):
            out.setdefault(key, {})["state"] = json.loads(text).get("state")
        for rule, at in conn.execute(
                sa.select(events_t.c.rule, sa.func.max(events_t.c.created_at))
                .where(events_t.c.state == "firing").group_by(events_t.c.rule)):
            out.setdefault(rule, {})["last_fired_at"] = at
        latest = (sa.select(sa.func.max(deliveries_t.c.id))
                  .select_from(deliveries_t.join(events_t, events_t.c.id == deliveries_t.c.event_id))
                  .group_by(events_t.c.rule).scalar_subquery())
        rows = conn.execute(
            sa.select(events_t.c.rule, events_t.c.state.label("event_state"), deliveries_t.c.destination,
                      deliveries_t.c.status, deliveries_t.c.attempts, deliveries_t.c.last_error,
                      deliveries_t.c.updated_at)
            .select_from(deliveries_t.join(events_t, events_t.c.id == deliveries_t.c.event_id))
            .where(deliveries_t.c.id.in_(latest))).all()
    for r in rows:
        out.setdefault(r.rule, {})["last_delivery"] = {
            "at": r.updated_at, "ok": {"delivered": True, "failed": False,
                                       "retrying": False}.get(r.status),
            "status": r.status, "error": r.last_error, "destination": r.destination,
            "attempts": r.attempts, "notification": r.event_state}
    return out


def recent_events(engine, limit=50):
    with engine.connect() as conn:
        events = conn.execute(sa.select(events_t.c.id, events_t.c.rule, events_t.c.state,
                                        events_t.c.created_at, events_t.c.payload)
                              .order_by(events_t.c.id.desc()).limit(limit)).all()
        ids = [e.id for e in events]
        deliveries = conn.execute(sa.select(deliveries_t).where(
            deliveries_t.c.event_id.in_(ids))).all() if ids else []
    by_event = {}
    for d in deliveries:
        by_event.setdefault(d.event_id, []).append(d)
    return [(e, by_event.get(e.id, [])) for e in events]


# -- jobs ----------------------------------------------------------------------------------

def jobs_ended_since(engine, since, statuses):
    cols = (jobs_t.c.id, jobs_t.c.name, jobs_t.c.definition, jobs_t.c.status,
            jobs_t.c.created_at, jobs_t.c.started_at, jobs_t.c.finished_at)
    with engine.connect() as conn:
        return conn.execute(sa.select(*cols).where(jobs_t.c.status.in_(statuses),
                                                   jobs_t.c.finished_at >= since)).all()


def jobs_running_since(engine, before):
    cols = (jobs_t.c.id, jobs_t.c.name, jobs_t.c.definition, jobs_t.c.status,
            jobs_t.c.created_at, jobs_t.c.started_at, jobs_t.c.finished_at)
    with engine.connect() as conn:
        return conn.execute(sa.select(*cols).where(jobs_t.c.status == "running",
                                                   jobs_t.c.started_at <= before)).all()


def job_names(engine, job_ids):
    """``{job id: (name, definition)}``."""
    with engine.connect() as conn:
        return {r.id: (r.name, r.definition) for r in conn.execute(
            sa.select(jobs_t.c.id, jobs_t.c.name, jobs_t.c.definition)
            .where(jobs_t.c.id.in_(list(job_ids))))}


def host_name():
    import socket
    return socket.gethostname()[:200]
