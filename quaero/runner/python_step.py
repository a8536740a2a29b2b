"""Python steps: ``module:function`` from the jobs folder, called in a greenlet.

The function may take one argument, a :class:`StepContext`. It logs through
:mod:`logging`: a handler on the root logger routes its records into its job and step via
a context variable, and the service log's handler leaves them alone. A definition's own
module is reloaded when its file changes.
"""
import contextvars
import importlib
import inspect
import logging
import os
import sys
import time
import traceback

import gevent

from ..models import LEVELS
from ..servicelog import IngestHandler

DEBUG, WARN, ERROR = (LEVELS[k] for k in ("debug", "warn", "error"))

# (runner ident, job id, step name) inside a python step's greenlet
_current_step = contextvars.ContextVar("quaero_current_step", default=None)
_py_active = 0
_saved_root_level = None
_module_mtimes = {}               # python step modules of jobs folders: file -> mtime seen


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


def _step_of(record):
    cur = _current_step.get()
    return (cur[1], cur[2]) if cur is not None else None


class StepLogHandler(IngestHandler):
    """The python steps' handler. Like the service log's, it queues without waiting for a
    commit; but a step that logs faster than the database commits is held back (in its own
    greenlet, briefly) while the ingest queue is nearly full, instead of losing lines."""

    def __init__(self, ingestor, ident):
        super().__init__(ingestor, target=_step_of)
        self.ident = ident
        self.addFilter(self._in_my_step)

    def _in_my_step(self, record):
        cur = _current_step.get()
        return cur is not None and cur[0] == self.ident

    def emit(self, record):
        self.ingestor.wait_for_room()
        super().emit(record)


def install_step_logging(ingestor, ident, service_handler):
    """Route the records of this runner's python steps to their steps (and keep them out
    of the service log); returns the handler, for :func:`remove_step_logging`."""
    handler = StepLogHandler(ingestor, ident)
    logging.getLogger().addHandler(handler)
    service_handler.addFilter(_not_in_step)
    return handler


def remove_step_logging(handler):
    logging.getLogger().removeHandler(handler)


class StepStopped(BaseException):
    """Raised in a python step's greenlet when it is cancelled or times out."""


class StepContext:
    """What a python step function may take as its one argument."""

    def __init__(self, ctx, running, step):
        self.job_id = running.job_id
        self.job_name = running.name
        self.step = step.name
        self.env = dict(step.env)
        self.jobs_dir = ctx.jobs_dir
        self.logger = logging.getLogger("quaero_job")
        self._running = running

    @property
    def stopping(self):
        return self._running.stop_reason is not None

    def sleep(self, seconds):
        gevent.sleep(seconds)


def resolve(target, jobs_dir):
    """The callable ``module:function`` names; a module of the jobs folder is reloaded when
    its file changed since it was imported."""
    module_name, _, attr = target.partition(":")
    if jobs_dir not in sys.path:
        sys.path.append(jobs_dir)
    obj = importlib.import_module(module_name)
    path = getattr(obj, "__file__", None) or ""
    if path.startswith(jobs_dir + os.sep):  # a definition's own module: edits apply
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


def _wants_context(fn):
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
               for p in params)


def run_python(ctx, rj, step):
    """Call a python step to its end: ``(outcome, detail)`` as for command steps."""
    job_id = rj.job_id
    ctx.write(job_id, step.name, DEBUG, f"calling {step.target}")
    started = time.monotonic()
    try:
        fn = resolve(step.target, ctx.jobs_dir)
    except BaseException as exc:  # noqa: BLE001 - an import may raise anything
        if isinstance(exc, (KeyboardInterrupt, gevent.GreenletExit)):
            raise
        detail = f"cannot load {step.target}: {exc.__class__.__name__}: {exc}"
        ctx.write(job_id, step.name, ERROR, detail)
        return "failed", detail
    if rj.stop_reason is not None:
        return "stopped", None
    result, timed_out = _call(ctx, rj, step, fn)
    elapsed = time.monotonic() - started
    # submit() also waits for the step's queued logging lines (the ingestor is FIFO)
    if rj.stop_reason is not None:
        ctx.write(job_id, step.name, WARN, rj.stopped_line(step))
        return "stopped", None
    if timed_out:
        ctx.write(job_id, step.name, ERROR,
                  f"step {step.name!r} timed out after {step.timeout:g} s")
        return "failed", f"timed out after {step.timeout:g} s"
    if isinstance(result, BaseException):
        tb = "".join(traceback.format_exception(result)).rstrip()
        detail = f"{result.__class__.__name__}: {result}"
        ctx.write(job_id, step.name, ERROR, f"step {step.name!r} failed: {detail}\n{tb}")
        return "failed", detail
    ctx.write(job_id, step.name, DEBUG, f"returned after {elapsed:.2f} s")
    return "completed", None


def _call(ctx, rj, step, fn):
    """Run ``fn`` in its own greenlet, within the step's timeout: ``(what it returned or
    raised, timed out)``."""
    step_ctx = StepContext(ctx, rj, step)
    wants = _wants_context(fn)

    def body():
        _current_step.set((ctx.ident, rj.job_id, step.name))
        try:
            fn(step_ctx) if wants else fn()
            return None
        except StepStopped:
            return "stopped"
        except Exception as exc:  # reported as the step's failure
            return exc

    _python_step_begins()
    g = gevent.spawn(body)
    rj.step_greenlet = g
    timed_out = False
    try:
        g.join(timeout=step.timeout)
        if not g.dead:
            timed_out = True
            g.kill(StepStopped, block=True, timeout=ctx.kill_grace)
    finally:
        rj.step_greenlet = None
        if not g.dead:
            g.kill(block=False)
        _python_step_ends()
    return (g.value if g.successful() else g.exception), timed_out
