"""``python -m quaero run --local``: a job run in this process, without a server.

The app is created here, the job started on its runner, and its lines printed from the
bus as they are committed; Ctrl-C cancels the job (twice: quit at once)."""
import signal

import click
import gevent
from gevent.queue import Queue

from . import create_app
from .errors import QuaeroError
from .models import FINISHED, LEVELS as LEVEL_VALUES


def run_local(definition, level, printer, detach):
    """Create the app here, start the job on its runner, print from the bus. Returns the
    job's final status, or ``None`` when Ctrl-C ended the run."""
    hub = gevent.get_hub()
    # Ctrl-C still raises KeyboardInterrupt in the command; the hub need not print it.
    hub.NOT_ERROR = tuple(hub.NOT_ERROR) + (KeyboardInterrupt,)
    # no evaluator, no schedules here: this process ends with its job
    app = create_app({"QUAERO_DEPLOYMENT_DUTIES": False})
    state = app.extensions["quaero"]
    state.start()  # this process is the server: its writer, bus and runner
    runner = state.runner
    events = Queue()
    wanted = set()
    min_level = LEVEL_VALUES[level]

    def on_lines(lines):
        mine = [ln for ln in lines if ln["job_id"] in wanted and LEVEL_VALUES[ln["level"]] >= min_level]
        if mine:
            events.put(("logs", mine))

    def on_status(payload):
        if payload["job"]["id"] in wanted:
            events.put(("status", payload))

    state.bus.connect(on_lines, on_status)
    # Ctrl-C: cancel the job (its processes are killed) instead of a KeyboardInterrupt
    # landing in whichever greenlet runs at that moment.
    interrupt = gevent.signal_handler(signal.SIGINT, lambda: events.put(("interrupt", None)))
    outcome = "failed"
    try:
        with app.app_context():
            try:
                job = runner.start_job(definition)
            except QuaeroError as exc:
                raise click.ClickException(exc.message) from None
            job_id = job.id
            wanted.add(job_id)
            printer.note(f"job {job_id} ({job.name}) started in this process "
                         f"(database {app.config['SQLALCHEMY_DATABASE_URI']})")
        if detach:
            printer.note("--detach with an in-process run waits for the job anyway")
        interrupted = False
        while True:
            kind, payload = events.get()
            if kind == "logs":
                printer.lines(payload)
            elif kind == "interrupt":
                if interrupted:
                    outcome = None
                    break  # a second Ctrl-C: stop now; the runner's close kills the step
                interrupted = True
                printer.note(f"interrupted: cancelling job {job_id} (Ctrl-C again to quit)")
                gevent.spawn(runner.cancel, job_id, runner.kill_grace + 2)
            else:
                printer.status(payload)
                status = payload["job"]["status"]
                if status in FINISHED:
                    outcome = None if interrupted else status
                    break
    finally:
        interrupt.cancel()
        state.bus.disconnect(on_lines, on_status)
        state.close()
    return outcome
