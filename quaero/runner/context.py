"""What a running step gets from the runner: the job's state and a small context, never
the runner itself."""
from dataclasses import dataclass

import gevent
from gevent.event import Event

from ..errors import QuaeroError
from ..models import utcnow


class RunningJob:
    """A job this process runs; the scheduler and the current step share it."""

    def __init__(self, job_id):
        self.job_id = job_id
        self.name = None
        self.greenlet = None
        self.proc = None           # the running command step's Popen
        self.step_greenlet = None  # the running python step's greenlet
        self.stop_reason = None    # "cancel", "shutdown" or "external"
        self.finishing = False
        self.done = Event()

    def stopped_line(self, step):
        if self.stop_reason == "cancel":
            return f"cancelled by request: step {step.name!r} was stopped"
        if self.stop_reason == "shutdown":
            return f"Quaero is stopping: step {step.name!r} was stopped"
        return f"the job was finished elsewhere: step {step.name!r} was stopped"


@dataclass(frozen=True)
class RunContext:
    """The runner's settings and output path, as its steps see them."""
    ingestor: object
    jobs_dir: str
    kill_grace: float
    ident: str                 # routes python steps' logging to this runner's handler

    def write(self, job_id, step, level, message):
        """A line of the runner's own, committed before the caller goes on."""
        try:
            self.ingestor.submit([{"job_id": job_id, "step_name": step, "level": level,
                                   "message": message, "timestamp": utcnow()}], timeout=60)
        except (QuaeroError, gevent.Timeout):
            pass
