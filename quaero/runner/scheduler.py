"""Quaero runs jobs itself: definitions from TOML files, steps as subprocesses or greenlets.

A definition is one ``*.toml`` file in ``QUAERO_JOBS_DIR``::

    description = "Build and test"          # name defaults to the file's stem
    [[steps]]
    name = "build"
    run = "make -j4"                        # a shell command, in its own process group
    timeout = 600                           # seconds (optional)
    env = { CC = "clang" }                  # added to the environment (optional)
    [[steps]]
    name = "report"
    python = "reports:summarise"            # module:function, called in a greenlet
    continue_on_error = true                # a failure does not fail the job (optional)

A command step's stdout lines are ``info`` and its stderr lines ``warn``, unless a line
starts with a level word (``ERROR:``, ``[debug]``, ``WARNING ...``). A python step logs
through :mod:`logging`; a handler on the root logger routes its records into its job and
step via a context variable. A failed step fails the job; the remaining steps are skipped.

Several processes may share one database, each with a runner: a pending job is claimed
with a conditional ``UPDATE`` (only one process wins), the number of running definition
jobs is bounded across all of them (``QUAERO_MAX_RUNNING``), and every runner keeps a
heartbeat row so that a job left ``running`` by a process that died is marked failed,
while jobs of live processes are left alone.
"""
import atexit
import contextvars
import importlib
import inspect
import logging
import os
import re
import signal
import socket
import sys
import time
import tomllib
import traceback
import uuid
import weakref
from collections import OrderedDict, deque
from dataclasses import dataclass

import gevent
import sqlalchemy as sa
from gevent import subprocess
from gevent.event import Event
from flask import current_app, has_app_context

from . import jobs as jobops
from .errors import DefinitionInvalid, QuaeroError
from .ingest import IngestError
from .models import FINISHED, LEVELS, Job, counters_t, db, utcnow
from .servicelog import IngestHandler

log = logging.getLogger("quaero.runner")

DEBUG, INFO, WARN, ERROR = (LEVELS[k] for k in ("debug", "info", "warn", "error"))

BATCH_LINES = 5000        # lines per ingest call from one step
BUFFER_LINES = 20000      # a step's unsent lines beyond which its pipes are not read
MAX_LINE_BYTES = 65536    # longer output lines are split
SECRET_ENV = ("QUAERO_API_TOKEN", "QUAERO_SECRET_KEY", "QUAERO_DATABASE_URL", "QUAERO_REDIS_URL")
CLAIM_LOCK = 0x51756165   # pg_advisory_xact_lock key serialising claims ("Quae")

jobs_t = Job.__table__

# Runner bookkeeping lives in ``line_counters`` (a key -> bigint table), so that it needs
# no schema change: ``runner:<hex N>`` -> last heartbeat (epoch ms) of runner N, and
# ``lease:<job id>`` -> N, the runner that claimed the job. N encodes a hash of the host
# name and the pid, so that a runner can tell a dead process on its own host at once.
RUNNER_PREFIX = "runner:"
LEASE_PREFIX = "lease:"


def _host_hash(host):
    import hashlib
    return int.from_bytes(hashlib.sha1(host.encode()).digest()[:4], "big") & 0x3FFFFFFF


def _runner_number(host, pid):
    return (_host_hash(host) << 30) | ((pid & 0x3FFFFF) << 8) | int.from_bytes(os.urandom(1), "big")


def _runner_host_pid(n):
    return n >> 30, (n >> 8) & 0x3FFFFF


def _epoch_ms():
    return int(time.time() * 1000)


# --- definitions -------------------------------------------------------------------------

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}\Z")
STEP_NAME_RE = re.compile(r"[^\x00-\x1f/]{1,200}\Z")
TARGET_RE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*\Z")
DEF_KEYS = {"name", "description", "steps"}
STEP_KEYS = {"name", "run", "python", "timeout", "continue_on_error", "env", "description"}


@dataclass(frozen=True)
class StepDef:
    name: str
    kind: str                  # "run" or "python"
    target: str                # the shell command, or "module:function"
    timeout: float | None
    continue_on_error: bool
    env: tuple                 # ((key, value), ...)

    def json(self):
        return {"name": self.name, "kind": self.kind, "command": self.target,
                "timeout": self.timeout, "continue_on_error": self.continue_on_error}


@dataclass(frozen=True)
class Definition:
    name: str
    description: str
    steps: tuple
    path: str

    def json(self):
        return {"name": self.name, "description": self.description,
                "file": os.path.basename(self.path), "steps": [s.json() for s in self.steps]}


class DefinitionError(Exception):
    pass


def parse_definition(path):
    """A :class:`Definition` from one TOML file, or :class:`DefinitionError` saying what is
    wrong with it (the caller names the file)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise DefinitionError(f"not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise DefinitionError("not valid TOML: the file is not UTF-8") from None
    except OSError as exc:
        raise DefinitionError(f"cannot be read: {exc.strerror}") from None
    unknown = sorted(set(data) - DEF_KEYS)
    if unknown:
        raise DefinitionError(f"unknown key{'s' if len(unknown) > 1 else ''} "
                              f"{', '.join(unknown)} (allowed: description, name, steps)")
    stem = os.path.splitext(os.path.basename(path))[0]
    name = data.get("name", stem)
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise DefinitionError(f"name must be a string of letters, digits, '.', '_' or '-' "
                              f"(got {name!r})")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise DefinitionError("description must be a string")
    steps = data.get("steps")
    if not isinstance(steps, list) or not steps:
        raise DefinitionError("no steps: add at least one [[steps]] table with a name and "
                              "run = \"<command>\" or python = \"module:function\"")
    if len(steps) > 500:
        raise DefinitionError("at most 500 steps")
    out, seen = [], set()
    for i, raw in enumerate(steps, 1):
        out.append(_parse_step(raw, i, seen))
    return Definition(name, description, tuple(out), os.path.abspath(path))


def _parse_step(raw, i, seen):
    where = f"step {i}"
    if not isinstance(raw, dict):
        raise DefinitionError(f"{where} must be a table ([[steps]])")
    name = raw.get("name")
    if isinstance(name, str):
        where = f"step {i} ({name!r})"
    unknown = sorted(set(raw) - STEP_KEYS)
    if unknown:
        raise DefinitionError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} "
                              f"{', '.join(unknown)} (allowed: {', '.join(sorted(STEP_KEYS))})")
    if isinstance(name, str) and "/" in name:
        raise DefinitionError(f"{where}: step names cannot contain '/'")
    if not isinstance(name, str) or not STEP_NAME_RE.match(name):
        raise DefinitionError(f"{where}: name is required, a string of 1 to 200 characters "
                              "without '/' or control characters")
    if name in seen:
        raise DefinitionError(f"{where}: step names must be unique, {name!r} is used twice")
    seen.add(name)
    has_run, has_py = "run" in raw, "python" in raw
    if has_run == has_py:
        raise DefinitionError(f"{where}: give either run = \"<shell command>\" or "
                              f"python = \"module:function\"{', not both' if has_run else ''}")
    if has_run:
        kind, target = "run", raw["run"]
        if not isinstance(target, str) or not target.strip():
            raise DefinitionError(f"{where}: run must be a non-empty string (a shell command)")
    else:
        kind, target = "python", raw["python"]
        if not isinstance(target, str) or not TARGET_RE.match(target.strip()):
            raise DefinitionError(f"{where}: python must be \"module:function\" "
                                  f"(got {target!r})")
        target = target.strip()
    timeout = raw.get("timeout")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise DefinitionError(f"{where}: timeout must be a positive number of seconds")
        timeout = float(timeout)
    coe = raw.get("continue_on_error", False)
    if not isinstance(coe, bool):
        raise DefinitionError(f"{where}: continue_on_error must be true or false")
    env = raw.get("env", {})
    if not isinstance(env, dict) or not all(
            isinstance(k, str) and k and "=" not in k and "\x00" not in k
            and isinstance(v, (str, int, float)) and not isinstance(v, bool) for k, v in env.items()):
        raise DefinitionError(f"{where}: env must be a table of NAME = \"value\" strings")
    env = tuple((k, str(v)) for k, v in env.items())
    if any("\x00" in v for _, v in env):
        raise DefinitionError(f"{where}: env values cannot contain NUL")
    return StepDef(name, kind, target, timeout, coe, env)


def resolve_jobs_dir(configured):
    """An absolute jobs folder: relative to the working directory; the default ``jobs``
    falls back to the project's own ``jobs/`` when the working directory has none."""
    path = os.path.abspath(configured)
    if not os.path.isdir(path) and not os.path.isabs(configured) and configured == "jobs":
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        path = os.path.join(root, "jobs")
    return path


# --- output of command steps -------------------------------------------------------------

_LEVEL_WORDS = {"trace": DEBUG, "debug": DEBUG, "dbg": DEBUG, "info": INFO, "notice": INFO,
                "warn": WARN, "warning": WARN, "error": ERROR, "err": ERROR, "fatal": ERROR,
                "critical": ERROR, "crit": ERROR}
_LEVEL_RE = re.compile(r"[ \t]{0,8}(?:\[[ \t]*([A-Za-z]{3,8})[ \t]*\]|<([A-Za-z]{3,8})>"
                       r"|([A-Za-z]{3,8})[ \t]*:|([A-Z]{3,8})(?=[ \t]|\Z))")


_SGR_RE = re.compile(r"\x1b\[[0-9;]*m")   # ANSI colours and styles (Select Graphic Rendition)


def line_level(text, default):
    """The level a line names at its start (``ERROR: x``, ``[debug] x``, ``WARNING x``),
    colour codes around the word aside (``\\x1b[31mERROR:``)."""
    if "\x1b" in text:
        text = _SGR_RE.sub("", text[:200])
    m = _LEVEL_RE.match(text)
    if m is None:
        return default
    word = m.group(1) or m.group(2) or m.group(3) or m.group(4)
    return _LEVEL_WORDS.get(word.lower(), default)


class OutputPump:
    """Lines read from a step's pipes, sent to the ingestor in batches of many lines.

    Readers stop reading while ``BUFFER_LINES`` are waiting, so a step that prints faster
    than the database commits is slowed down by its full pipe, never by our memory."""

    def __init__(self, ingestor, job_id, step):
        self.ingestor = ingestor
        self.job_id = job_id
        self.step = step
        self.buf = deque()
        self.has_data = Event()
        self.space = Event()
        self.space.set()
        self.closed = False
        self.abandoned = False
        self.sent = 0

    def read(self, stream, default_level):
        partial = b""
        try:
            while True:
                chunk = stream.read1(65536)
                if not chunk:
                    break
                parts = (partial + chunk).split(b"\n")
                partial = parts.pop()
                while len(partial) > MAX_LINE_BYTES:
                    parts.append(partial[:MAX_LINE_BYTES])
                    partial = partial[MAX_LINE_BYTES:]
                if parts:
                    self._add(parts, default_level)
                while len(self.buf) >= BUFFER_LINES and not self.abandoned:
                    self.space.clear()
                    self.space.wait()
            if partial:
                self._add([partial], default_level)
        except (OSError, ValueError):
            pass  # the pipe was closed under us (the step was stopped)

    def _add(self, parts, default_level):
        now = utcnow()
        append = self.buf.append
        job_id, step = self.job_id, self.step
        for raw in parts:
            text = raw.decode("utf-8", "replace")
            if text.endswith("\r"):
                text = text[:-1]
            if "\x00" in text:
                text = text.replace("\x00", "\ufffd")
            append({"job_id": job_id, "step_name": step, "level": line_level(text, default_level),
                    "message": text, "timestamp": now})
        self.has_data.set()

    def add_line(self, level, message):
        self.buf.append({"job_id": self.job_id, "step_name": self.step, "level": level,
                         "message": message, "timestamp": utcnow()})
        self.has_data.set()

    def close(self):
        self.closed = True
        self.has_data.set()

    def abandon(self):
        """Stop waiting on the database (shutdown): readers drain pipes without storing."""
        self.abandoned = True
        self.buf.clear()
        self.space.set()
        self.close()

    def run(self):
        """The flusher: one ingest call at a time, each with whatever queued meanwhile."""
        while True:
            if not self.buf:
                if self.closed:
                    return
                self.has_data.clear()
                self.has_data.wait()
                continue
            n = min(len(self.buf), BATCH_LINES)
            lines = [self.buf.popleft() for _ in range(n)]
            if len(self.buf) < BUFFER_LINES:
                self.space.set()
            self._submit(lines)

    def _submit(self, lines):
        while not self.abandoned:
            try:
                self.ingestor.submit(lines, timeout=120)
                self.sent += len(lines)
                return
            except IngestError as exc:
                if exc.status != 503:
                    self.abandoned = True  # the job is gone: drain, store nothing
                    self.buf.clear()
                    self.space.set()
                    return
                gevent.sleep(1.0)  # database down: hold the lines (and the pipe) and retry
            except gevent.Timeout:
                return  # still queued in the ingestor: it commits them when it can


# --- python steps ------------------------------------------------------------------------

# (runner ident, job id, step name) inside a python step's greenlet
_current_step = contextvars.ContextVar("quaero_current_step", default=None)
_py_active = 0
_saved_root_level = None


def _python_step_begins():
    """Python steps' debug records must reach the root logger's handlers."""
    global _py_active, _saved_root_level
    _py_active += 1
    if _py_active == 1:
        root = logging.getLogger()
        _saved_root_level = root.level
        if root.level > logging.DEBUG:
            root.setLevel(logging.DEBUG)


def _python_step_ends():
    global _py_active
    _py_active -= 1
    if _py_active == 0 and _saved_root_level is not None:
        logging.getLogger().setLevel(_saved_root_level)


def _not_in_step(record):
    return _current_step.get() is None


class StepLogHandler(IngestHandler):
    """The python steps' handler. Like the service log's, it queues without waiting for a
    commit; but a step that logs faster than the database commits is held back (in its own
    greenlet, briefly) while the ingest queue is nearly full, instead of losing lines."""

    def emit(self, record):
        self.ingestor.wait_for_room()
        super().emit(record)


class StepStopped(BaseException):
    """Raised in a python step's greenlet when it is cancelled or times out."""


class StepContext:
    """What a python step function may take as its one argument."""

    def __init__(self, runner, running, step):
        self.job_id = running.job_id
        self.job_name = running.name
        self.step = step.name
        self.env = dict(step.env)
        self.jobs_dir = runner.jobs_dir
        self.logger = logging.getLogger("quaero_job")
        self._running = running

    @property
    def stopping(self):
        return self._running.stop_reason is not None

    def sleep(self, seconds):
        gevent.sleep(seconds)


# --- the runner --------------------------------------------------------------------------

class RunningJob:
    def __init__(self, job_id):
        self.job_id = job_id
        self.name = None
        self.greenlet = None
        self.proc = None           # the running command step's Popen
        self.step_greenlet = None  # the running python step's greenlet
        self.stop_reason = None    # "cancel", "shutdown" or "external"
        self.finishing = False
        self.done = Event()


_live_runners = weakref.WeakSet()
_module_mtimes = {}               # python step modules of jobs folders: file -> mtime seen
_atexit_registered = False


def _close_all_at_exit():
    for runner in list(_live_runners):
        try:
            if runner._pid == os.getpid():
                runner.close(grace=2.0)
        except Exception:
            pass


def _pid_alive(pid):
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


class Runner:
    """Loads definitions, starts and cancels jobs, and runs them in this process."""

    def __init__(self, app, state):
        self.app = app
        self.state = state
        self.engine = state.engine
        self.ingestor = state.ingestor
        self.bus = state.bus
        cfg = app.config
        self.jobs_dir = resolve_jobs_dir(cfg.get("QUAERO_JOBS_DIR") or "jobs")
        self.max_running = max(1, int(cfg.get("QUAERO_MAX_RUNNING") or 4))
        self.kill_grace = float(cfg.get("QUAERO_KILL_GRACE", 5.0))
        self.poll_interval = float(cfg.get("QUAERO_RUNNER_POLL", 1.0))
        self.heartbeat_interval = float(cfg.get("QUAERO_RUNNER_HEARTBEAT", 5.0))
        self.stale_after = float(cfg.get("QUAERO_RUNNER_STALE", 30.0))
        self.host = socket.gethostname()[:200]
        self.runner_id = None             # N, see _runner_number
        self._ident = uuid.uuid4().hex
        self._pid = None
        self._closed = False
        self._running = {}
        self._wake = Event()
        self._loop_greenlet = None
        self._snapshots = OrderedDict()   # job id -> Definition as it was when started
        self._defs = {}
        self.errors = {}                  # file path -> problem
        self._signature = None
        self._reported = {}               # file path -> (signature, problem) already logged
        self._load()
        # python steps' logging: the root logger, routed by the current step
        self.step_handler = StepLogHandler(self.ingestor, target=self._target)
        self.step_handler.addFilter(self._in_my_step)
        logging.getLogger().addHandler(self.step_handler)
        state.log_handler.addFilter(_not_in_step)
        self.bus.connect(self._on_lines, self._on_status)
        app.before_request(self.ensure_started)
        from .cli import cli  # `flask --app wsgi quaero run demo` = `python -m quaero run demo`
        app.cli.add_command(cli, "quaero")
        _live_runners.add(self)

    # -- definitions --------------------------------------------------------------------

    def _files(self):
        try:
            entries = sorted((e for e in os.scandir(self.jobs_dir)
                              if e.name.endswith(".toml") and e.is_file()), key=lambda e: e.name)
        except OSError:
            return ()
        out = []
        for e in entries:
            try:
                st = e.stat()
            except OSError:
                continue
            out.append((e.path, st.st_mtime_ns, st.st_size))
        return tuple(out)

    def _load(self):
        """(Re)read the definition files when any changed; bad files are reported once."""
        files = self._files()
        if files == self._signature:
            return
        parsed, failed = {}, {}
        for path, _, _ in files:
            try:
                parsed[path] = parse_definition(path)
            except DefinitionError as exc:
                failed[path] = exc
        defs, errors = {}, {}
        # Two files, one name: the file named after the job wins, else the first by name.
        ranked = sorted(parsed.items(), key=lambda kv: (
            os.path.splitext(os.path.basename(kv[0]))[0] != kv[1].name, kv[0]))
        for path, d in ranked:
            if d.name in defs:
                failed[path] = DefinitionError(
                    f"defines job {d.name!r}, which {os.path.basename(defs[d.name].path)} "
                    "already defines")
            else:
                defs[d.name] = d
        for path, mtime, size in files:
            if path in failed:
                exc = failed[path]
                errors[path] = str(exc)
                if self._reported.get(path) != ((mtime, size), str(exc)):
                    self._reported[path] = ((mtime, size), str(exc))
                    log.error("job definition %s was not loaded: %s", path, exc)
        self._defs, self.errors, self._signature = defs, errors, files

    def definitions(self):
        self._load()
        return dict(self._defs)

    def definition(self, name):
        self._load()
        d = self._defs.get(name)
        if d is not None:
            return d
        for path, problem in self.errors.items():
            if os.path.splitext(os.path.basename(path))[0] == name:
                raise DefinitionInvalid(f"job definition {name!r} ({path}) is invalid: {problem}")
        raise DefinitionInvalid(f"no job definition named {name!r} in {self.jobs_dir}")

    def definitions_json(self):
        """Every definition file: the loaded ones, and those that do not load with their
        ``error`` (they cannot be started), by name."""
        self.ensure_started()
        listed = [d.json() for d in self.definitions().values()]
        listed += [{"name": os.path.splitext(os.path.basename(path))[0], "description": "",
                    "file": os.path.basename(path), "steps": [], "error": problem}
                   for path, problem in self.errors.items()]
        return sorted(listed, key=lambda d: (d["name"], d["file"]))

    # -- the API's hooks ----------------------------------------------------------------

    def start(self, name):
        """Create a pending job from definition ``name``; a runner with a free slot (this
        one, usually at once) claims it. Needs an app context (the caller's session)."""
        self.ensure_started()
        d = self.definition(name)
        job = jobops.create_job(d.name, [s.name for s in d.steps], definition=d.name)
        self._snapshots[job.id] = d
        while len(self._snapshots) > 1000:
            self._snapshots.popitem(last=False)
        self._wake.set()
        return job

    def cancel(self, job_id, wait=3.0):
        """Stop a job this process runs: True if it took charge (the job ends
        ``cancelled``), False if the caller should settle it (pending, or not ours)."""
        self.ensure_started()
        rj = self._running.get(job_id)
        if rj is None or rj.finishing:
            return False
        self._stop(rj, "cancel")
        rj.done.wait(timeout=wait)
        if has_app_context() and current_app._get_current_object() is self.app:
            db.session.rollback()  # the caller reads the job again: not from its stale copy
        return True

    def close(self, grace=None):
        """Stop this process's jobs (they end failed: Quaero stopped) and the runner."""
        if self._closed:
            return
        self._closed = True
        grace = self.kill_grace if grace is None else grace
        try:
            if self._pid == os.getpid():
                running = list(self._running.values())
                for rj in running:
                    self._stop(rj, "shutdown", grace=grace)
                gevent.joinall([rj.greenlet for rj in running if rj.greenlet],
                               timeout=grace + 3.0)
                for rj in running:
                    if rj.proc is not None:
                        self._signal_group(rj.proc, signal.SIGKILL)
                    if rj.greenlet is not None and not rj.greenlet.dead:
                        rj.greenlet.kill(block=False)
                if self._loop_greenlet is not None:
                    self._loop_greenlet.kill(block=False)
                if self.runner_id:
                    try:
                        with self.engine.begin() as conn:
                            conn.execute(counters_t.delete().where(
                                counters_t.c.key == self._runner_key))
                    except Exception:
                        pass
        finally:
            logging.getLogger().removeHandler(self.step_handler)
            try:
                self.bus.disconnect(self._on_lines, self._on_status)
            except Exception:
                pass
            _live_runners.discard(self)

    # -- lifecycle ----------------------------------------------------------------------

    def ensure_started(self):
        """Start this process's scheduler greenlet (lazily: gunicorn forks workers)."""
        global _atexit_registered
        pid = os.getpid()
        if self._pid == pid or self._closed:
            return
        self._pid = pid
        self.runner_id = _runner_number(self.host, pid)
        self._runner_key = f"{RUNNER_PREFIX}{self.runner_id:x}"
        self._running = {}
        self._wake = Event()
        self._loop_greenlet = gevent.spawn(self._loop, pid)
        if not _atexit_registered:
            _atexit_registered = True
            atexit.register(_close_all_at_exit)

    def running_job_ids(self):
        return set(self._running)

    def _loop(self, pid):
        registered = False
        next_beat = next_recover = 0.0
        failing = None
        while not self._closed and os.getpid() == pid:
            self._wake.clear()
            try:
                if not registered:
                    self._register()
                    registered = True
                now = time.monotonic()
                if now >= next_beat:
                    self._heartbeat()
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

    def _register(self):
        self._heartbeat()

    def _heartbeat(self):
        with self.engine.begin() as conn:
            n = conn.execute(counters_t.update().where(counters_t.c.key == self._runner_key)
                             .values(value=_epoch_ms())).rowcount
            if n == 0:  # first beat, or our row was removed (taken for dead): come back
                conn.execute(counters_t.insert().values(key=self._runner_key, value=_epoch_ms()))

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
        """Mark failed the jobs left ``running`` by runners that are gone: on this host a
        process that no longer exists; anywhere, a heartbeat older than ``stale_after``."""
        with self.engine.connect() as conn:
            running = conn.execute(sa.select(jobs_t.c.id).where(
                jobs_t.c.status == "running", jobs_t.c.definition.isnot(None))).scalars().all()
            others = [j for j in running if j not in self._running]
            if not others:
                return
            leases = dict(conn.execute(sa.select(counters_t.c.key, counters_t.c.value).where(
                counters_t.c.key.in_([LEASE_PREFIX + j for j in others]))).all())
            owners = {v for v in leases.values()}
            beats = dict(conn.execute(sa.select(counters_t.c.key, counters_t.c.value).where(
                counters_t.c.key.in_([f"{RUNNER_PREFIX}{n:x}" for n in owners]))).all())
        now_ms = _epoch_ms()
        my_hash = _host_hash(self.host)
        for job_id in others:
            owner = leases.get(LEASE_PREFIX + job_id)
            beat = beats.get(f"{RUNNER_PREFIX}{owner:x}") if owner is not None else None
            if owner == self.runner_id:
                continue  # claimed by us a moment ago
            if owner is None:
                reason = "no Quaero process owns it (it was left running by one that stopped)"
            else:
                host_hash, pid = _runner_host_pid(owner)
                if beat is None:
                    reason = f"the Quaero process that ran it (pid {pid}) is gone"
                elif host_hash == my_hash and pid != os.getpid() and not _pid_alive(pid):
                    reason = (f"the Quaero process that ran it (pid {pid} on {self.host}) "
                              "no longer exists")
                elif now_ms - beat > self.stale_after * 1000:
                    reason = (f"the Quaero process that ran it (pid {pid}) has sent no "
                              f"heartbeat for {(now_ms - beat) // 1000} s")
                else:
                    continue  # a live process runs it
            with self.app.app_context():
                try:
                    jobops.set_job_status(job_id, "failed", reason=reason)
                except QuaeroError:
                    pass
            with self.engine.begin() as conn:
                conn.execute(counters_t.delete().where(counters_t.c.key == LEASE_PREFIX + job_id))
        with self.engine.begin() as conn:  # runners silent for a day are forgotten
            old = [f"{RUNNER_PREFIX}{n:x}" for n in owners
                   if beats.get(f"{RUNNER_PREFIX}{n:x}", now_ms) < now_ms - 86400_000]
            if old:
                conn.execute(counters_t.delete().where(counters_t.c.key.in_(old)))

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
            if self._claim(job_id):
                rj = RunningJob(job_id)
                self._running[job_id] = rj
                rj.greenlet = gevent.spawn(self._run_job, rj)

    def _claim(self, job_id):
        """Atomically move a pending job to running, if the bound allows; one process wins."""
        now = utcnow()
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": CLAIM_LOCK})
            r = jobs_t.alias("r")
            others = (sa.select(sa.func.count()).select_from(r)
                      .where(r.c.status == "running", r.c.definition.isnot(None))
                      .scalar_subquery())
            n = conn.execute(jobs_t.update().where(
                jobs_t.c.id == job_id, jobs_t.c.status == "pending", others < self.max_running)
                .values(status="running", started_at=now)).rowcount
            if n != 1:
                return False
            lease = LEASE_PREFIX + job_id
            conn.execute(counters_t.delete().where(counters_t.c.key == lease))
            conn.execute(counters_t.insert().values(key=lease, value=self.runner_id))
        return True

    def _release(self, rj):
        self._running.pop(rj.job_id, None)
        rj.done.set()
        try:
            with self.engine.begin() as conn:
                conn.execute(counters_t.delete().where(
                    counters_t.c.key == LEASE_PREFIX + rj.job_id,
                    counters_t.c.value == self.runner_id))
        except Exception:
            pass
        self._wake.set()

    # -- stopping -----------------------------------------------------------------------

    def _on_lines(self, lines):
        pass

    def _on_status(self, payload):
        job = payload.get("job") or {}
        rj = self._running.get(job.get("id"))
        if rj is not None and not rj.finishing and (
                job.get("status") in FINISHED or job.get("status") == "deleted"):
            self._stop(rj, "external")

    def _stop(self, rj, reason, grace=None):
        if rj.stop_reason is not None:
            return
        rj.stop_reason = reason
        if rj.proc is not None:
            gevent.spawn(self._terminate, rj.proc, self.kill_grace if grace is None else grace)
        if rj.step_greenlet is not None:
            rj.step_greenlet.kill(StepStopped, block=False)

    @staticmethod
    def _signal_group(proc, sig):
        try:
            os.killpg(proc.pid, sig)  # start_new_session: the group id is the leader's pid
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def _terminate(self, proc, grace):
        """SIGTERM to the step's whole process group, SIGKILL to what is left after
        ``grace`` seconds."""
        if not self._signal_group(proc, signal.SIGTERM):
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            proc.poll()
            if not self._signal_group(proc, 0):
                return
            gevent.sleep(0.05)
        self._signal_group(proc, signal.SIGKILL)

    # -- running a job ------------------------------------------------------------------

    def _write(self, job_id, step, level, message):
        """A line of the runner's own, committed before the caller goes on."""
        try:
            self.ingestor.submit([{"job_id": job_id, "step_name": step, "level": level,
                                   "message": message, "timestamp": utcnow()}], timeout=60)
        except (IngestError, gevent.Timeout):
            pass

    def _transition(self, fn, *args, **kwargs):
        try:
            fn(*args, **kwargs)
            return True
        except QuaeroError:  # finished or deleted elsewhere
            db.session.rollback()
            return False

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
        step_names = [s.name for s in job.steps]
        definition_name = job.definition
        jobops.publish(job)  # the claim, seen by streams
        db.session.rollback()
        log.info("job %s (%s) started", job_id, rj.name)
        d = self._snapshots.pop(job_id, None) or self.definitions().get(definition_name)
        problem = None
        if d is None:
            problem = f"job definition {definition_name!r} is no longer available"
        elif [s.name for s in d.steps] != step_names:
            problem = (f"job definition {definition_name!r} changed since the job was created "
                       "(its steps differ); start it again")
        if problem:
            self._write(job_id, None, ERROR, problem)
            rj.finishing = True
            self._transition(jobops.set_job_status, job_id, "failed", reason=problem)
            return
        for step in d.steps:
            if rj.stop_reason is not None:
                break
            if not self._transition(jobops.set_step_status, job_id, step.name, "running"):
                self._stop(rj, "external")
                break
            if step.kind == "run":
                outcome, detail = self._run_command(rj, step)
            else:
                outcome, detail = self._run_python(rj, step)
            if outcome == "stopped":
                break
            if outcome == "failed" and step.continue_on_error:
                self._write(job_id, step.name, WARN,
                            f"step {step.name!r} failed ({detail}); the job goes on "
                            "(continue_on_error)")
            if outcome == "failed" and not step.continue_on_error:
                if self._transition(jobops.set_step_status, job_id, step.name, "failed"):
                    rj.finishing = True
                    self._transition(jobops.set_job_status, job_id, "failed",
                                     reason=f"step {step.name} failed: {detail}")
                return
            if not self._transition(jobops.set_step_status, job_id, step.name, outcome):
                self._stop(rj, "external")
                break
        rj.finishing = True
        if rj.stop_reason == "cancel":
            self._transition(jobops.set_job_status, job_id, "cancelled")
        elif rj.stop_reason == "shutdown":
            self._transition(jobops.set_job_status, job_id, "failed",
                             reason="Quaero stopped while the job was running")
        elif rj.stop_reason is None:
            self._transition(jobops.set_job_status, job_id, "completed")
        else:  # finished by another process: tell this process's streams too (no Redis)
            try:
                jobops.publish(jobops.get_job(job_id))
            except QuaeroError:
                self.bus.publish_status({"job": {"id": job_id, "status": "deleted"}, "steps": []})
            db.session.rollback()

    def _stopped_line(self, rj, step):
        if rj.stop_reason == "cancel":
            return f"cancelled by request: step {step.name!r} was stopped"
        if rj.stop_reason == "shutdown":
            return f"Quaero is stopping: step {step.name!r} was stopped"
        return f"the job was finished elsewhere: step {step.name!r} was stopped"

    def _step_env(self, rj, step):
        env = dict(os.environ)
        env.update({"PYTHONUNBUFFERED": "1", "QUAERO_JOB_ID": rj.job_id,
                    "QUAERO_JOB_NAME": rj.name or "", "QUAERO_STEP": step.name,
                    "QUAERO_PYTHON": sys.executable, "QUAERO_JOBS_DIR": self.jobs_dir})
        for secret in SECRET_ENV:  # steps do not inherit the server's secrets
            env.pop(secret, None)
        env.update(dict(step.env))
        return env

    def _run_command(self, rj, step):
        job_id = rj.job_id
        if rj.stop_reason is not None:
            return "stopped", None
        self._write(job_id, step.name, DEBUG, f"$ {step.target}")
        started = time.monotonic()
        try:
            proc = subprocess.Popen(step.target, shell=True, cwd=self.jobs_dir,
                                    env=self._step_env(rj, step), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    start_new_session=True)
        except OSError as exc:
            detail = f"could not start the command: {exc}"
            self._write(job_id, step.name, ERROR, detail)
            return "failed", detail
        pump = OutputPump(self.ingestor, job_id, step.name)
        rj.proc = proc
        if rj.stop_reason is not None:  # stopped while starting
            gevent.spawn(self._terminate, proc, self.kill_grace)
        readers = [gevent.spawn(pump.read, proc.stdout, INFO),
                   gevent.spawn(pump.read, proc.stderr, WARN)]
        flusher = gevent.spawn(pump.run)
        timed_out = False
        try:
            try:
                code = proc.wait(timeout=step.timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                pump.add_line(ERROR, f"step {step.name!r} timed out after {step.timeout:g} s: "
                                     "stopping its processes")
                self._terminate(proc, self.kill_grace)
                code = proc.wait()
            # What the command left behind in its group ends with the step.
            if self._signal_group(proc, 0):
                gevent.spawn(self._terminate, proc, self.kill_grace)
            gevent.joinall(readers, timeout=self.kill_grace + 2.0)
            if any(not r.dead for r in readers):  # a pipe held open by an escaped process
                gevent.killall(readers, block=False)
            if rj.stop_reason == "shutdown":
                pump.abandon()
            pump.close()
            flusher.join()
        finally:
            rj.proc = None
            if proc.poll() is None or self._signal_group(proc, 0):
                self._signal_group(proc, signal.SIGKILL)
            for r in readers + [flusher]:
                if not r.dead:
                    r.kill(block=False)
            for f in (proc.stdout, proc.stderr):
                try:
                    f.close()
                except Exception:
                    pass
        elapsed = time.monotonic() - started
        if rj.stop_reason is not None:
            self._write(job_id, step.name, WARN, self._stopped_line(rj, step))
            return "stopped", None
        if timed_out:
            return "failed", f"timed out after {step.timeout:g} s"
        if code == 0:
            self._write(job_id, step.name, DEBUG, f"exit code 0 after {elapsed:.2f} s")
            return "completed", None
        if code < 0:
            try:
                detail = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                detail = f"killed by signal {-code}"
        else:
            detail = f"exit code {code}"
        self._write(job_id, step.name, ERROR, f"step {step.name!r} failed: {detail} "
                                              f"after {elapsed:.2f} s")
        return "failed", detail

    def _resolve(self, target):
        module_name, _, attr = target.partition(":")
        if self.jobs_dir not in sys.path:
            sys.path.append(self.jobs_dir)
        obj = importlib.import_module(module_name)
        path = getattr(obj, "__file__", None) or ""
        if path.startswith(self.jobs_dir + os.sep):  # a definition's own module: edits apply
            try:
                mtime = os.stat(path).st_mtime_ns
            except OSError:
                mtime = None
            seen = _module_mtimes.setdefault(path, mtime)
            if mtime is not None and seen != mtime:
                obj = importlib.reload(obj)
                _module_mtimes[path] = mtime
        for part in attr.split("."):
            obj = getattr(obj, part)
        if not callable(obj):
            raise TypeError(f"{target} is not callable")
        return obj

    @staticmethod
    def _wants_context(fn):
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            return False
        return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
                   for p in params)

    def _target(self, record):
        cur = _current_step.get()
        return (cur[1], cur[2]) if cur is not None else None

    def _in_my_step(self, record):
        cur = _current_step.get()
        return cur is not None and cur[0] == self._ident

    def _run_python(self, rj, step):
        job_id = rj.job_id
        self._write(job_id, step.name, DEBUG, f"calling {step.target}")
        started = time.monotonic()
        try:
            fn = self._resolve(step.target)
        except BaseException as exc:  # noqa: BLE001 - an import may raise anything
            if isinstance(exc, (KeyboardInterrupt, gevent.GreenletExit)):
                raise
            detail = f"cannot load {step.target}: {exc.__class__.__name__}: {exc}"
            self._write(job_id, step.name, ERROR, detail)
            return "failed", detail
        ctx = StepContext(self, rj, step)
        wants = self._wants_context(fn)
        ident = self._ident

        def body():
            _current_step.set((ident, job_id, step.name))
            try:
                fn(ctx) if wants else fn()
                return None
            except StepStopped:
                return "stopped"
            except Exception as exc:  # reported as the step's failure
                return exc

        if rj.stop_reason is not None:
            return "stopped", None
        _python_step_begins()
        g = gevent.spawn(body)
        rj.step_greenlet = g
        timed_out = False
        try:
            g.join(timeout=step.timeout)
            if not g.dead:
                timed_out = True
                g.kill(StepStopped, block=True, timeout=self.kill_grace)
        finally:
            rj.step_greenlet = None
            if not g.dead:
                g.kill(block=False)
            _python_step_ends()
        result = g.value if g.successful() else g.exception
        elapsed = time.monotonic() - started
        # submit() also waits for the step's queued logging lines (the ingestor is FIFO)
        if rj.stop_reason is not None:
            self._write(job_id, step.name, WARN, self._stopped_line(rj, step))
            return "stopped", None
        if timed_out:
            self._write(job_id, step.name, ERROR,
                        f"step {step.name!r} timed out after {step.timeout:g} s")
            return "failed", f"timed out after {step.timeout:g} s"
        if isinstance(result, BaseException):
            tb = "".join(traceback.format_exception(result)).rstrip()
            detail = f"{result.__class__.__name__}: {result}"
            self._write(job_id, step.name, ERROR, f"step {step.name!r} failed: {detail}\n{tb}")
            return "failed", detail
        self._write(job_id, step.name, DEBUG, f"returned after {elapsed:.2f} s")
        return "completed", None
