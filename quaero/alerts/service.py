"""The alert evaluator of this process (:class:`AlertService`): one of the app's parts,
started and stopped with the others (``Quaero.start``/``stop``).

Every process has one; only the process that holds the lease (``store.Lease``) evaluates.
It never stands in the way of ingest or streams: the bus hands it committed lines by
appending them to an inbox (nothing else happens in the publisher's greenlet), and its own
greenlet reads them. Lines reach it as they reach the streams: from this process's writer,
from other processes over Redis, and otherwise from the database — ids are dense and
become visible in commit order, so "every line with an id above the last one read"
misses none: a gap in the bus's ids, or lines the bus did not bring within a tick (other
processes without Redis), are read from the database.

What it decides is saved before anything is sent: the rules' states, how far it read and
the notifications (events, one delivery per destination), in one transaction
(``_checkpoint``). A sender greenlet then delivers, with retries and backoff; a delivery
is marked ``sending`` before its request, so that one found ``sending`` by a new evaluator
(its predecessor was killed mid-request: the outcome is unknown) is sent again, and only
those are."""
import logging
import time
from datetime import timedelta

import gevent
from gevent.event import Event

from ..models import ENDED, utcnow
from ..queries import newest_id
from . import engine, store
from .config import AlertLibrary, resolve_alerts_dir
from .feed import LineFeed
from .matcher import LineMatcher
from .jobwatch import job_notices
from .sender import Sender

log = logging.getLogger("quaero.alerts")

REPLAY_MAX = 200000         # lines replayed at take-over; older ones are skipped, and said so
STALE_CHECKPOINT_MS = 600_000   # a failover resumes from the checkpoint; after this, now
CHECKPOINT_EVERY = 5.0      # seconds between saves of states when nothing was decided
DB_LOOK_EVERY = 0.5         # seconds between looks at the newest id (lines the bus missed;
DB_LOOK_REDIS = 2.0         # with Redis the bus brings them, and a gap in its ids is read)
JOBS_EVERY = 5.0            # seconds between reads of ended and long-running jobs (a job
                            # ending on the bus wakes it at once)
PRUNE_EVERY = 3600.0
COALESCE = 0.25


def _ms():
    return int(time.time() * 1000)


class AlertService:
    def __init__(self, app, state):
        cfg = app.config
        self.app = app
        self.state = state
        self.engine = state.engine
        self.bus = state.bus
        self.library = AlertLibrary(resolve_alerts_dir(cfg.get("QUAERO_ALERTS_DIR") or "alerts"))
        self.lease = store.Lease(self.engine, "alerts", store.host_name(),
                                 float(cfg.get("QUAERO_ALERTS_LEASE", 15.0)))
        self.tick = float(cfg.get("QUAERO_ALERTS_TICK", 0.5))
        self.smtp_url = cfg.get("QUAERO_SMTP_URL")
        self.smtp_from = cfg.get("QUAERO_SMTP_FROM")
        self.public_url = cfg.get("QUAERO_PUBLIC_URL") or "http://127.0.0.1:5000"
        # False for a process that is no server (``run --local``): no evaluator, no schedules
        self.enabled = cfg.get("QUAERO_DEPLOYMENT_DUTIES", True)
        self.retention_days = float(cfg.get("QUAERO_RETENTION_DAYS") or 0)
        self.holding = False
        self.closed = False
        self._group = None
        self._wake = Event()
        self.sender = Sender(self)
        self._matcher = LineMatcher([])   # the rules that look at lines (from the take-over)
        self.rules = {}
        self.feed = LineFeed(self.engine, DB_LOOK_REDIS if cfg.get("QUAERO_REDIS_URL")
                             else DB_LOOK_EVERY)
        self._files_at = 0.0
        self._jobs_due = True
        self._failing = None
        self.bus.connect(self._on_lines, self._on_status)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self, group):
        if self.closed or not self.enabled:
            return
        self._group = group
        self.lease.begin(self.state.pid)
        group.spawn(self._loop)
        group.spawn(self.sender.run, group)

    def stop(self):
        if self.closed:
            return
        self.closed = True
        self._wake.set()
        self.sender.wake.set()
        try:
            self.bus.disconnect(self._on_lines, self._on_status)
        except Exception:
            pass
        if self.holding and self.state.started_here():
            self.holding = False
            try:
                self.lease.release()
            except Exception:
                pass

    # -- the bus's receivers: never more than an append -----------------------------------

    def _on_lines(self, lines):
        if not self.holding or self._matcher.empty:
            return
        if self.feed.offer(lines):
            self._wake.set()

    def _on_status(self, payload):
        if self.holding and payload.get("job", {}).get("status") in ENDED:
            self._jobs_due = True
            self._wake.set()

    # -- the evaluator's loop -----------------------------------------------------------

    def _loop(self):
        next_try = 0.0
        while not self.closed and self.state.started_here():
            try:
                now = time.monotonic()
                if not self.holding and now >= next_try:
                    next_try = now + 1.0
                    # no rule, no work: not even the lease (every test app, most servers)
                    self.library.load()
                    if self.library.rules and self.lease.acquire():
                        self._take_over()
                if self.holding:
                    self._evaluate()
                if self._failing:
                    log.info("alert evaluator: database working again")
                self._failing = None
            except store.LeaseLost:
                log.warning("alert evaluator: another process holds the lease now; this one "
                            "stops evaluating")
                self.holding = False
            except Exception as exc:
                if self._failing != exc.__class__:
                    log.warning("alert evaluator: %s: %s; retrying", exc.__class__.__name__,
                                str(exc).splitlines()[0][:200] if str(exc) else "")
                    self._failing = exc.__class__
                gevent.sleep(1.0)
            self._wake.wait(self.tick)
            # lines come in many small batches a second: take them together
            gevent.sleep(max(0.0, COALESCE - (time.monotonic() - now)))
            self._wake.clear()

    def _take_over(self):
        """This process holds the lease: resume from the checkpoint."""
        self.library.load()
        saved = store.load_states(self.engine)
        now = _ms()
        cursor = saved.pop(store.CURSOR, None)
        with self.engine.connect() as conn:
            newest = newest_id(conn)
        if cursor is None or now - cursor["saved_ms"] > STALE_CHECKPOINT_MS:
            # the first evaluator ever, or the first for long (no rule meanwhile, or no
            # server up): the rules start from now on, not from the history
            cursor = {"last_id": newest, "jobs_since": now}
        last_id = cursor["last_id"]
        if newest - last_id > REPLAY_MAX:
            log.warning("alert evaluator: %d lines were committed since the last evaluator "
                        "stopped; the rules see only the newest %d", newest - last_id,
                        REPLAY_MAX)
            last_id = newest - REPLAY_MAX
        self.feed.reset(last_id, newest)   # (what the inbox held meanwhile: stale)
        self.jobs_since = cursor["jobs_since"]
        self.states = {}
        self.dirty = set()
        self._reconcile(saved, now)
        self._unsaved = []          # notices decided, not yet written
        self._ticked_at = 0.0
        self._saved_at = time.monotonic()
        self._jobs_at = 0.0
        self._pruned_at = 0.0
        self._job_cache = {}
        self._cursor_dirty = True
        if self.rules:  # (none: nothing to say in every deployment's service log)
            log.info("alert evaluator: this process (pid %s) evaluates %d rule%s from %s",
                     self.lease.pid, len(self.rules), "" if len(self.rules) == 1 else "s",
                     self.library.alerts_dir)
        # from now on the bus's lines are kept: those committed since the newest id was
        # read above are a gap the feed reads from the database
        self.holding = True
        self.sender.wake.set()

    def _reconcile(self, saved, now):
        """Each usable rule gets its saved state (if saved for this version of it), else a
        fresh one; states of rules that are gone are dropped at the next save."""
        self.rules = self.library.usable_rules()
        gone = set(self.states) - set(self.rules)
        for name, rule in self.rules.items():
            st = engine.usable(rule, self.states.get(name) or saved.get(name))
            if st is None:
                st = engine.fresh_state(rule, now)
                self.dirty.add(name)
            self.states[name] = st
        for name in gone:
            del self.states[name]
        self._dropped = gone | (set(saved) - set(self.rules))
        self._matcher = LineMatcher([r for r in self.rules.values() if r.on_lines])
        self._timed = [r for r in self.rules.values() if r.kind in ("match", "absence")]
        self._job_patterns = any(r.on_lines and r.job for r in self.rules.values())

    def _evaluate(self):
        now = _ms()
        changed = False
        if time.monotonic() >= self._files_at:   # the folder, at most once a second
            self._files_at = time.monotonic() + 1.0
            changed = self.library.load()
        if changed:
            if not self.library.rules:   # the last rule went: so does the lease
                self._checkpoint()
                self.holding = False
                self.lease.release()
                return
            self._reconcile({}, now)
        if self._matcher.empty:
            lines = []
            self._cursor_dirty |= self.feed.skip()
        else:
            lines = self.feed.take()
            self._cursor_dirty |= bool(lines)
        notices = []
        if lines:
            notices += self._match_lines(lines, now)
        if self._jobs_due or time.monotonic() - self._jobs_at >= JOBS_EVERY:
            notices += self._job_notices(now)
        if time.monotonic() >= self._ticked_at + self.tick:   # not at every batch of lines
            self._ticked_at = time.monotonic()
            for rule in self._timed:
                found = engine.on_tick(rule, self.states[rule.name], now)
                if found:
                    self.dirty.add(rule.name)
                    notices += found
        self._unsaved += notices
        if self._unsaved or (time.monotonic() - self._saved_at >= CHECKPOINT_EVERY
                             and (self.dirty or self._cursor_dirty or self._dropped)):
            self._checkpoint()
        elif time.monotonic() - self._saved_at >= self.lease.ttl_ms / 3000:
            self._checkpoint()   # renews the lease, and says the checkpoint is current
        if self.retention_days and time.monotonic() - self._pruned_at >= PRUNE_EVERY:
            self._pruned_at = time.monotonic()
            store.prune(self.engine, utcnow() - timedelta(days=max(self.retention_days, 1)))

    # -- lines ----------------------------------------------------------------------------

    def _match_lines(self, lines, now):
        matcher = self._matcher
        if matcher.empty:
            return []
        if self._job_patterns:
            self._learn_jobs({ln["job_id"] for ln in lines if ln["job_id"]})
        matched = {}
        for rule, found in matcher.match(lines).items():
            if rule.job is not None:
                found = [ln for ln in found if self._line_job_matches(rule, ln)]
            if found:
                matched[rule.name] = found
        notices = []
        for name, found in matched.items():
            self.dirty.add(name)
            notices += engine.on_lines(self.rules[name], self.states[name], found, now)
        return notices

    def _learn_jobs(self, job_ids):
        unknown = [j for j in job_ids if j not in self._job_cache]
        if unknown:
            if len(self._job_cache) > 10000:
                self._job_cache.clear()
            names = store.job_names(self.engine, unknown)
            for j in unknown:
                self._job_cache[j] = names.get(j, (None, None))

    def _line_job_matches(self, rule, line):
        if line["job_id"] is None:
            return False
        name, definition = self._job_cache.get(line["job_id"], (None, None))
        return name is not None and rule.matches_job(name, definition)

    # -- jobs -----------------------------------------------------------------------------

    def _job_notices(self, now):
        self._jobs_due = False
        self._jobs_at = time.monotonic()
        notices = job_notices(self.engine, self.rules.values(), self.jobs_since, now,
                              {n.key for n in self._unsaved})
        if self.jobs_since != now:
            self.jobs_since, self._cursor_dirty = now, True
        return notices

    # -- saving what was decided ----------------------------------------------------------

    def _checkpoint(self):
        states = {n: self.states[n] for n in self.dirty if n in self.states}
        states[store.CURSOR] = {"last_id": self.feed.last_id, "jobs_since": self.jobs_since}
        notices = list(self._unsaved)
        with self.engine.begin() as conn:
            self.lease.fence(conn)
            for notice in notices:
                rule = self.rules.get(notice.rule)
                store.add_event(conn, notice.key, notice.rule, notice.state,
                                engine.payload(notice, rule, self.public_url),
                                rule.notify if rule else ())
            store.save_states(conn, states)
            store.drop_states(conn, self._dropped)
        self._unsaved = self._unsaved[len(notices):]
        self.dirty.clear()
        self._dropped = set()
        self._cursor_dirty = False
        self._saved_at = time.monotonic()
        for notice in notices:
            log.log(logging.WARNING if notice.state == "firing" else logging.INFO,
                    "alert %s", notice.summary)
        if notices:
            self.sender.wake.set()
