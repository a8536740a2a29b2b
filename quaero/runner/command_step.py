"""Command steps: a shell command in its own process group, supervised.

Its stdout lines are ``info`` and its stderr lines ``warn``, unless a line starts with a
level word (``ERROR:``, ``[debug]``, ``WARNING ...``, colour codes aside). Lines go to the
ingestor in batches; a step that prints faster than the database commits is slowed down by
its full pipe. Stopping a step (cancel, timeout, shutdown) signals its whole group.

Commands are started with ``posix_spawn``, not ``subprocess.Popen``: under gevent, Popen
forks and runs Python in the child, where any library's at-fork handler that yields (the
OpenTelemetry SDK's do) hands the child to its copy of the hub, which resumes copies of
the server's greenlets: one of them could start another job's command a second time
(gevent #2202). A spawned child runs no Python before ``exec``.
"""
import os
import signal
import sys
import time
from collections import deque

import gevent
import gevent.os
from gevent.event import Event
from gevent.fileobject import FileObjectPosix
from gevent.monkey import get_original

from ..errors import QuaeroError, Unavailable
from ..levels import DEBUG, ERROR, INFO, WARN, exit_detail, line_level
from ..models import utcnow

BATCH_LINES = 5000        # lines per ingest call from one step
BUFFER_LINES = 20000      # a step's unsent lines beyond which its pipes are not read
MAX_LINE_BYTES = 65536    # longer output lines are split
SECRET_ENV = ("QUAERO_API_TOKEN", "QUAERO_SECRET_KEY", "QUAERO_DATABASE_URL", "QUAERO_REDIS_URL")


SHELL = "/bin/sh"
IN_DIR = 'cd -- "$1" && exec /bin/sh -c "$2"'  # posix_spawn has no cwd here
# Patched os.close defers the close to the hub's next turn: a write end still open here
# then would keep a reader of its pipe from ever seeing the end. These never had watchers.
close_now = get_original("os", "close")


class Process:
    """A shell command in a new session, spawned without running Python in the child.

    ``stdout`` and ``stderr`` are pipes read through gevent; gevent's child watcher reaps
    it, so ``wait`` and ``poll`` never block the server."""

    def __init__(self, command, cwd, env):
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        null = os.open(os.devnull, os.O_RDONLY)
        try:
            actions = [(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, out_w, 1),
                       (os.POSIX_SPAWN_DUP2, err_w, 2)]
            # Like Popen's close_fds: the server's inheritable descriptors stay here.
            actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inheritable_fds()]
            # Before the child exists: an end before gevent handles SIGCHLD is never seen.
            gevent.get_hub().loop.install_sigchld()
            self.pid = gevent.os.posix_spawn(SHELL, [SHELL, "-c", IN_DIR, "sh", cwd, command],
                                             env, file_actions=actions, setsid=True)
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            for fd in (null, out_w, err_w):
                close_now(fd)
        self.returncode = None
        self.stdout = FileObjectPosix(out_r, "rb")
        self.stderr = FileObjectPosix(err_r, "rb")

    def _reap(self, options):
        if self.returncode is None:
            pid, status = gevent.os.waitpid(self.pid, options)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def poll(self):
        return self._reap(os.WNOHANG)

    def wait(self, timeout=None):
        """The exit code (minus the signal that killed it), or None after ``timeout``."""
        with gevent.Timeout(timeout, False):
            self._reap(0)
        return self.returncode


FD_DIR = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"  # (macOS: /dev/fd)


def _inheritable_fds():
    fds = []
    for name in os.listdir(FD_DIR):
        fd = int(name)
        try:
            if fd > 2 and os.get_inheritable(fd):
                fds.append(fd)
        except OSError:  # the listing's own descriptor, closed by now
            pass
    return fds


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
            except QuaeroError as exc:
                if not isinstance(exc, Unavailable):
                    self.abandoned = True  # the job is gone: drain, store nothing
                    self.buf.clear()
                    self.space.set()
                    return
                gevent.sleep(1.0)  # database down: hold the lines (and the pipe) and retry
            except gevent.Timeout:
                return  # still queued in the ingestor: it commits them when it can


def signal_group(proc, sig):
    try:
        os.killpg(proc.pid, sig)  # start_new_session: the group id is the leader's pid
        return True
    except (ProcessLookupError, PermissionError):
        return False


def terminate(proc, grace):
    """SIGTERM to the step's whole process group, SIGKILL to what is left after ``grace``
    seconds."""
    if not signal_group(proc, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        proc.poll()
        if not signal_group(proc, 0):
            return
        gevent.sleep(0.05)
    signal_group(proc, signal.SIGKILL)


def step_env(ctx, rj, step):
    env = dict(os.environ)
    env.update({"PYTHONUNBUFFERED": "1", "QUAERO_JOB_ID": rj.job_id,
                "QUAERO_JOB_NAME": rj.name or "", "QUAERO_STEP": step.name,
                "QUAERO_PYTHON": sys.executable, "QUAERO_JOBS_DIR": ctx.jobs_dir})
    for secret in SECRET_ENV:  # steps do not inherit the server's secrets
        env.pop(secret, None)
    env.update(dict(step.env))
    return env


def run_command(ctx, rj, step):
    """Run a command step to its end: ``(outcome, detail)``, outcome one of ``completed``,
    ``failed``, ``stopped``."""
    job_id = rj.job_id
    if rj.stop_reason is not None:
        return "stopped", None
    ctx.write(job_id, step.name, DEBUG, f"$ {step.target}")
    started = time.monotonic()
    try:
        proc = Process(step.target, ctx.jobs_dir, step_env(ctx, rj, step))
    except OSError as exc:
        detail = f"could not start the command: {exc}"
        ctx.write(job_id, step.name, ERROR, detail)
        return "failed", detail
    rj.proc = proc
    if rj.stop_reason is not None:  # stopped while starting
        gevent.spawn(terminate, proc, ctx.kill_grace)
    code, timed_out = _supervise(ctx, rj, step, proc)
    elapsed = time.monotonic() - started
    if rj.stop_reason is not None:
        ctx.write(job_id, step.name, WARN, rj.stopped_line(step))
        return "stopped", None
    if timed_out:
        return "failed", f"timed out after {step.timeout:g} s"
    if code == 0:
        ctx.write(job_id, step.name, DEBUG, f"exit code 0 after {elapsed:.2f} s")
        return "completed", None
    detail = exit_detail(code)
    ctx.write(job_id, step.name, ERROR, f"step {step.name!r} failed: {detail} "
                                        f"after {elapsed:.2f} s")
    return "failed", detail


def _supervise(ctx, rj, step, proc):
    """Pump the command's output until it ends (or its timeout stops it); nothing of it
    is left running afterwards. Returns ``(exit code, timed out)``."""
    pump = OutputPump(ctx.ingestor, rj.job_id, step.name)
    readers = [gevent.spawn(pump.read, proc.stdout, INFO),
               gevent.spawn(pump.read, proc.stderr, WARN)]
    flusher = gevent.spawn(pump.run)
    timed_out = False
    try:
        code = proc.wait(timeout=step.timeout)
        if code is None:
            timed_out = True
            pump.add_line(ERROR, f"step {step.name!r} timed out after {step.timeout:g} s: "
                                 "stopping its processes")
            terminate(proc, ctx.kill_grace)
            code = proc.wait()
        # What the command left behind in its group ends with the step.
        if signal_group(proc, 0):
            gevent.spawn(terminate, proc, ctx.kill_grace)
        gevent.joinall(readers, timeout=ctx.kill_grace + 2.0)
        if any(not r.dead for r in readers):  # a pipe held open by an escaped process
            gevent.killall(readers, block=False)
        if rj.stop_reason == "shutdown":
            pump.abandon()
        pump.close()
        flusher.join()
    finally:
        rj.proc = None
        if proc.poll() is None or signal_group(proc, 0):
            signal_group(proc, signal.SIGKILL)
        for r in readers + [flusher]:
            if not r.dead:
                r.kill(block=False)
        for f in (proc.stdout, proc.stderr):
            try:
                f.close()
            except Exception:
                pass
    return code, timed_out
