"""The runner: starts, cancels and runs definition jobs in this process.

Each process has one :class:`Runner`. Its scheduler greenlet (started per process by the
app's ``start()``, through :meth:`Runner.start`) keeps the heartbeat, claims
pending jobs while there is room, stops jobs finished elsewhere and fails the jobs of
runners that are gone. A job runs its steps in order in its own greenlet; a failed step
fails the job and the remaining steps are skipped.
"""
import atexit
import logging
import signal
import socket
import time
import uuid
import weakref
from collections import OrderedDict

import gevent
import sqlalchemy as sa
from gevent.event import Event
from flask import current_app, has_app_context

from .. import jobs as jobops
from ..errors import QuaeroError
from ..models import ENDED, LEVELS, Job, db, deleted_payload
from .command_step import run_command, signal_group, terminate
from .context import RunContext, RunningJob
from .definitions import DefinitionLibrary, resolve_jobs_dir
from .leases import Leases
from .python_step import StepStopped, install_step_logging, remove_step_logging, run_python

log = logging.getLogger("quaero.runner")

WARN, ERROR = LEVELS["warn"], LEVELS["error"]
jobs_t = Job.__table__

_live_runners = weakref.WeakSet()
_atexit_registered = False


def _close_all_at_exit():
    for runner in list(_live_runners):
        try:
            if runner.state.started_here():
                runner.stop(grace=2.0)
        except Exception:
            pass


def _transition(fn, *args, **kwargs):
    """Apply a job or step transition: False if the job was finished or deleted elsewhere."""
    try:
        fn(*args, **kwargs)
        return True
    except QuaeroError:
        db.session.rollback()
        return False


class Runner:
    """Loads definitions, starts and cancels jobs, and runs them in this process."""

    def __init__(self, app, state):
        self.app = app
        self.state = state
        self.bus = state.bus
        cfg = app.config
        self.jobs_dir = resolve_jobs_dir(cfg.get("QUAERO_JOBS_DIR") or "jobs")
        self.max_running = max(1, int(cfg.get("QUAERO_MAX_RUNNING") or 4))
        self.kill_grace = float(cfg.get("QUAERO_KILL_GRACE", 5.0))
        self.poll_interval = float(cfg.get("QUAERO_RUNNER_POLL", 1.0))
        self.heartbeat_interval = float(cfg.get("QUAERO_RUNNER_HEARTBEAT", 5.0))
        self.engine = state.engine
        self.leases = Leases(state.engine, socket.gethostname()[:200],
                             float(cfg.get("QUAERO_RUNNER_STALE", 30.0)))
        self.library = DefinitionLibrary(self.jobs_dir)
        self.ctx = RunContext(state.ingestor, self.jobs_dir, self.kill_grace, uuid.uuid4().hex)
        self._closed = False
        self._running = {}
        self._wake = Event()
        self._loop_greenlet = None
        self._group = None
        self._snapshots = OrderedDict()   # job id -> Definition as it was when started
        self.step_handler = install_step_logging(state.ingestor, self.ctx.ident,
                                                 state.log_handler)
        self.bus.connect(self._on_lines, self._on_status)
        _live_runners.add(self)

    # -- the API's hooks ----------------------------------------------------------------

    def definitions_json(self):
        return self.library.json()

    def start_job(self, name):
        """Create a pending job from definition ``name``; a runner with a free slot (this
        one, usually at once) claims it. Needs an app context (the caller's session)."""
        d = self.library.get(name)
        job = jobops.create_job(d.name, [s.name for s in d.steps], definition=d.name)
        self._snapshots[job.id] = d
        while len(self._snapshots) > 1000:
            self._snapshots.popitem(last=False)
        self._wake.set()
        return job

    def cancel(self, job_id, wait=3.0):
        """Stop a job this process runs: True if this call took charge (the job ends
        ``cancelled``), False if the caller should settle it: pending, or not ours, or
        already stopping or ending (then once it ended, so that the caller finds it ended
        instead of cancelling it under the runner's own transition)."""
        rj = self._running.get(job_id)
        if rj is None:
            return False
        took_charge = rj.stop_reason is None and not rj.finishing
        if took_charge:
            self._stop(rj, "cancel")
        if has_app_context() and current_app._get_current_object() is self.app:
            # The caller reads the job again, not its stale copy; and its pooled connection
            # goes back while it waits: 20 cancels waiting on theirs left the runner none
            # to record the end with, and each gave up after ``wait`` and cancelled the job.
            db.session.rollback()
        rj.done.wait(timeout=wait)
        return took_charge

    # -- lifecycle ----------------------------------------------------------------------

    def start(self, group):
        """This process's scheduler greenlet, in the app's ``group`` (``Quaero.start``, in
        each process: gunicorn forks workers, and each is a runner of its own); the jobs'
        greenlets join the group too."""
        global _atexit_registered
        if self._closed:
            return
        self._group = group
        self.leases.begin(self.state.pid)
        self._running = {}
        self._wake = Event()
        self._loop_greenlet = group.spawn(self._loop)
        if not _atexit_registered:
            _atexit_registered = True
            atexit.register(_close_all_at_exit)

    def stop(self, grace=None):
        """Stop this process's jobs (they end failed: Quaero stopped) and the runner."""
        if self._closed:
            return
        self._closed = True
        grace = self.kill_grace if grace is None else grace
        try:
            if self.state.started_here():
                self._stop_all(grace)
                try:
                    self.leases.end()
                except Exception:
                    pass
        finally:
            remove_step_logging(self.step_handler)
            try:
                self.bus.disconnect(self._on_lines, self._on_status)
            except Exception:
                pass
            _live_runners.discard(self)

    def _stop_all(self, grace):
        running = list(self._running.values())
        for rj in running:
            self._stop(rj, "shutdown", grace=grace)
        gevent.joinall([rj.greenlet for rj in running if rj.greenlet], timeout=grace + 3.0)
        for rj in running:
            if rj.proc is not None:
                signal_group(rj.proc, signal.SIGKILL)
            if rj.greenlet is not None and not rj.greenlet.dead:
                rj.greenlet.kill(block=False)
        if self._loop_greenlet is not None:
            self._loop_greenlet.kill(block=False)

    # -- the scheduler loop -------------------------------------------------------------

    def _loop(self):
        next_beat = next_recover = 0.0
        failing = None
        while not self._closed and self.state.started_here():
            self._wake.clear()
            try:
                now = time.monotonic()
                if now >= next_beat:
                    self.leases.heartbeat()
                    next_beat = now + self.heartbeat_interval
                self._check_running()
                if now >= next_recover:
                    self._recover()
                    next_recover = now + max(self.heartbeat_interval, 5.0)
                self._fill()
                if failing:
                    log.info("job runner: database working again")
                failing = None
            except Exception as exc:
                if failing != exc.__class__:
                    log.warning("job runner: database error (%s: %s); retrying",
                                exc.__class__.__name__, str(exc).splitlines()[0][:200])
                    failing = exc.__class__
                gevent.sleep(1.0)
            self._wake.wait(self.poll_interval)

    def _check_running(self):
        """Jobs we run that were finished elsewhere (another process, a PATCH): stop them."""
        mine = [rj for rj in self._running.values() if not rj.finishing and rj.stop_reason is None]
        if not mine:
            return
        with self.engine.connect() as conn:
            status = dict(conn.execute(sa.select(jobs_t.c.id, jobs_t.c.status).where(
                jobs_t.c.id.in_([rj.job_id for rj in mine]))).all())
        for rj in mine:
            if status.get(rj.job_id) != "running" and not rj.finishing:
                self._stop(rj, "external")

    def _recover(self):
        """Mark failed the jobs left ``running`` by runners that are gone."""
        for job_id, reason in self.leases.orphans(self._running):
            with self.app.app_context():
                try:
                    jobops.set_job_status(job_id, "failed", reason=reason)
                except QuaeroError:
                    pass
            self.leases.drop(job_id)

    def _fill(self):
        """Claim pending definition jobs, oldest first, while there is room."""
        free = self.max_running - len(self._running)
        if free <= 0 or self._closed:
            return
        with self.engine.connect() as conn:
            running = conn.execute(sa.select(sa.func.count()).select_from(jobs_t).where(
                jobs_t.c.status == "running", jobs_t.c.definition.isnot(None))).scalar()
            if running >= self.max_running:
                return
            ids = conn.execute(sa.select(jobs_t.c.id).where(
                jobs_t.c.status == "pending", jobs_t.c.definition.isnot(None))
                .order_by(jobs_t.c.created_at, jobs_t.c.id).limit(free + 5)).scalars().all()
        for job_id in ids:
            if len(self._running) >= self.max_running or self._closed:
                return
            if self.leases.claim(job_id, self.max_running):
                rj = RunningJob(job_id)
                self._running[job_id] = rj
                rj.greenlet = self._group.spawn(self._run_job, rj)

    def _release(self, rj):
        self._running.pop(rj.job_id, None)
        rj.done.set()
        try:
            self.leases.release(rj.job_id)
        except Exception:
            pass
        self._wake.set()

    # -- stopping -----------------------------------------------------------------------

    def _on_lines(self, lines):
        pass

    def _on_status(self, payload):
        job = payload.get("job") or {}
        rj = self._running.get(job.get("id"))
        if rj is not None and not rj.finishing and job.get("status") in ENDED:
            self._stop(rj, "external")

    def _stop(self, rj, reason, grace=None):
        if rj.stop_reason is not None:
            return
        rj.stop_reason = reason
        if rj.proc is not None:
            (self._group or gevent).spawn(terminate, rj.proc,
                                          self.kill_grace if grace is None else grace)
        if rj.step_greenlet is not None:
            rj.step_greenlet.kill(StepStopped, block=False)

    # -- running a job ------------------------------------------------------------------

    def _run_job(self, rj):
        try:
            with self.app.app_context():
                self._execute(rj)
        except gevent.GreenletExit:
            raise
        except Exception as exc:
            log.exception("job %s: the runner failed", rj.job_id)
            try:
                with self.app.app_context():
                    rj.finishing = True
                    jobops.set_job_status(rj.job_id, "failed",
                                          reason=f"runner error: {exc.__class__.__name__}: {exc}")
            except Exception:
                pass
        finally:
            self._release(rj)

    def _execute(self, rj):
        job_id = rj.job_id
        job = jobops.get_job(job_id)
        rj.name = job.name
        step_names, definition_name = [s.name for s in job.steps], job.definition
        jobops.publish(job)  # the claim, seen by streams
        db.session.rollback()
        log.info("job %s (%s) started", job_id, rj.name)
        d, problem = self.library.for_job(definition_name, step_names,
                                          self._snapshots.pop(job_id, None))
        if problem:
            self.ctx.write(job_id, None, ERROR, problem)
            rj.finishing = True
            _transition(jobops.set_job_status, job_id, "failed", reason=problem)
            return
        if self._run_steps(rj, d):
            self._settle(rj)

    def _run_steps(self, rj, d):
        """The steps in order; False when a failed step already failed the job."""
        job_id = rj.job_id
        for step in d.steps:
            if rj.stop_reason is not None:
                break
            if not _transition(jobops.set_step_status, job_id, step.name, "running"):
                self._stop(rj, "external")
                break
            run = run_command if step.kind == "run" else run_python
            outcome, detail = run(self.ctx, rj, step)
            if outcome == "stopped":
                break
            if outcome == "failed" and step.continue_on_error:
                self.ctx.write(job_id, step.name, WARN,
                               f"step {step.name!r} failed ({detail}); the job goes on "
                               "(continue_on_error)")
            if outcome == "failed" and not step.continue_on_error:
                if _transition(jobops.set_step_status, job_id, step.name, "failed"):
                    rj.finishing = True
                    _transition(jobops.set_job_status, job_id, "failed",
                                     reason=f"step {step.name} failed: {detail}")
                return False
            if not _transition(jobops.set_step_status, job_id, step.name, outcome):
                self._stop(rj, "external")
                break
        return True

    def _settle(self, rj):
        """The job's end, by why its steps stopped (or did not)."""
        job_id = rj.job_id
        rj.finishing = True
        if rj.stop_reason == "cancel":
            _transition(jobops.set_job_status, job_id, "cancelled")
        elif rj.stop_reason == "shutdown":
            _transition(jobops.set_job_status, job_id, "failed",
                             reason="Quaero stopped while the job was running")
        elif rj.stop_reason is None:
            _transition(jobops.set_job_status, job_id, "completed")
        else:  # finished by another process: tell this process's streams too (no Redis)
            try:
                jobops.publish(jobops.get_job(job_id))
            except QuaeroError:
                self.bus.publish_status(deleted_payload(job_id))
            db.session.rollback()
