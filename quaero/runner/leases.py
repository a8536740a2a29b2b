"""Leases and heartbeats: which runner runs which job, and which runners are alive.

Several processes may share one database, each with a runner. A pending job is claimed with
a conditional ``UPDATE`` (only one process wins) within the bound on running definition
jobs (``QUAERO_MAX_RUNNING``), and the winner takes the job's lease. Every runner keeps a
heartbeat, so that a job left ``running`` by a process that died is found, while the jobs
of live processes are left alone.

A runner is a number N that encodes a hash of the host name and the pid, so that a runner
can tell a dead process on its own host at once.
"""
import hashlib
import os
import time

import sqlalchemy as sa

from ..models import Job, heartbeats_t, leases_t, utcnow

CLAIM_LOCK = 0x51756165   # pg_advisory_xact_lock key serialising claims ("Quae")
FORGET_AFTER_MS = 86400_000   # runners silent for a day are forgotten

jobs_t = Job.__table__


def _host_hash(host):
    return int.from_bytes(hashlib.sha1(host.encode()).digest()[:4], "big") & 0x3FFFFFFF


def runner_number(host, pid):
    return (_host_hash(host) << 30) | ((pid & 0x3FFFFF) << 8) | int.from_bytes(os.urandom(1), "big")


def _runner_host_pid(n):
    return n >> 30, (n >> 8) & 0x3FFFFF


def epoch_ms():
    return int(time.time() * 1000)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    try:  # a zombie (its parent died too, and nobody reaped it) is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class Leases:
    """One runner's view of the shared leases and heartbeats."""

    def __init__(self, engine, host, stale_after):
        self.engine = engine
        self.host = host
        self.stale_after = stale_after
        self.runner_id = None
        self.pid = None

    def begin(self, pid):
        """A new runner number for this process (a forked worker gets its own)."""
        self.pid = pid
        self.runner_id = runner_number(self.host, pid)

    def heartbeat(self):
        me = heartbeats_t.c.runner_id == self.runner_id
        with self.engine.begin() as conn:
            n = conn.execute(heartbeats_t.update().where(me).values(beat_ms=epoch_ms())).rowcount
            if n == 0:  # first beat, or our row was removed (taken for dead): come back
                conn.execute(heartbeats_t.insert().values(runner_id=self.runner_id,
                                                          beat_ms=epoch_ms()))

    def end(self):
        """This runner stops: its heartbeat goes."""
        if self.runner_id:
            with self.engine.begin() as conn:
                conn.execute(heartbeats_t.delete().where(
                    heartbeats_t.c.runner_id == self.runner_id))

    def claim(self, job_id, max_running):
        """Atomically move a pending job to running, if the bound allows, and take its
        lease; one process wins.

        ``started_at`` is read once the claim has won, not before: the claim may wait (the
        claim lock, the database) while a job ends and makes room for it, and a time read
        before that wait said the job started before the end that let it start (three
        jobs at once, by their times, under a bound of two)."""
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": CLAIM_LOCK})
            r = jobs_t.alias("r")
            others = (sa.select(sa.func.count()).select_from(r)
                      .where(r.c.status == "running", r.c.definition.isnot(None))
                      .scalar_subquery())
            n = conn.execute(jobs_t.update().where(
                jobs_t.c.id == job_id, jobs_t.c.status == "pending", others < max_running)
                .values(status="running")).rowcount
            if n != 1:
                return False
            conn.execute(jobs_t.update().where(jobs_t.c.id == job_id)
                         .values(started_at=utcnow()))
            conn.execute(leases_t.delete().where(leases_t.c.job_id == job_id))
            conn.execute(leases_t.insert().values(job_id=job_id, runner_id=self.runner_id))
        return True

    def release(self, job_id):
        """Our job ended: its lease goes."""
        with self.engine.begin() as conn:
            conn.execute(leases_t.delete().where(
                leases_t.c.job_id == job_id, leases_t.c.runner_id == self.runner_id))

    def drop(self, job_id):
        """A job of a runner that is gone was settled: its lease goes."""
        with self.engine.begin() as conn:
            conn.execute(leases_t.delete().where(leases_t.c.job_id == job_id))

    def orphans(self, mine):
        """``(job id, why)`` for each running definition job not in ``mine`` whose runner
        is gone: on this host a process that no longer exists; anywhere, a heartbeat older
        than ``stale_after`` seconds. Runners silent for a day are forgotten meanwhile."""
        with self.engine.connect() as conn:
            running = conn.execute(sa.select(jobs_t.c.id).where(
                jobs_t.c.status == "running", jobs_t.c.definition.isnot(None))).scalars().all()
            others = [j for j in running if j not in mine]
            if not others:
                return []
            leases = dict(conn.execute(sa.select(leases_t.c.job_id, leases_t.c.runner_id)
                                       .where(leases_t.c.job_id.in_(others))).all())
            owners = set(leases.values())
            beats = dict(conn.execute(sa.select(heartbeats_t.c.runner_id, heartbeats_t.c.beat_ms)
                                      .where(heartbeats_t.c.runner_id.in_(owners))).all())
        now_ms = epoch_ms()
        found = []
        for job_id in others:
            owner = leases.get(job_id)
            if owner == self.runner_id:
                continue  # claimed by us a moment ago
            beat = beats.get(owner) if owner is not None else None
            why = self._why_gone(owner, beat, now_ms)
            if why:
                found.append((job_id, why))
        old = [n for n in owners if beats.get(n, now_ms) < now_ms - FORGET_AFTER_MS]
        if old:
            with self.engine.begin() as conn:
                conn.execute(heartbeats_t.delete().where(heartbeats_t.c.runner_id.in_(old)))
        return found

    def _why_gone(self, owner, beat, now_ms):
        """Why the runner ``owner`` (last heartbeat ``beat``) is gone, or None if it lives."""
        if owner is None:
            return "no Quaero process owns it (it was left running by one that stopped)"
        host_hash, pid = _runner_host_pid(owner)
        if beat is None:
            return f"the Quaero process that ran it (pid {pid}) is gone"
        if host_hash == _host_hash(self.host) and pid != self.pid and not pid_alive(pid):
            return f"the Quaero process that ran it (pid {pid} on {self.host}) no longer exists"
        if now_ms - beat > self.stale_after * 1000:
            return (f"the Quaero process that ran it (pid {pid}) has sent no heartbeat "
                    f"for {(now_ms - beat) // 1000} s")
        return None
