"""Quaero's own log output, fed into the service scope through the one write path."""
import logging
import traceback

from .models import LEVELS, utcnow

# Records of these loggers never go back into the write path: they report on it.
_SKIP = ("quaero.ingest", "gunicorn.access")


def record_level(levelno):
    if levelno >= logging.ERROR:
        return LEVELS["error"]
    if levelno >= logging.WARNING:
        return LEVELS["warn"]
    if levelno >= logging.INFO:
        return LEVELS["info"]
    return LEVELS["debug"]


class IngestHandler(logging.Handler):
    """Queues each record as a log line without blocking the caller.

    ``target(record)`` returns ``(job_id, step_name)`` for the record, or None for the
    service log; job steps use it to route their own logging into their step.
    """

    def __init__(self, ingestor, target=None, level=logging.DEBUG):
        super().__init__(level)
        self.ingestor = ingestor
        self.target = target
        self._emitting = False

    def emit(self, record):
        if self._emitting or record.name.startswith(_SKIP):
            return
        self._emitting = True
        try:
            job_id, step = (self.target(record) if self.target else None) or (None, None)
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
            self.ingestor.submit_nowait([{
                "job_id": job_id, "step_name": step, "level": record_level(record.levelno),
                "message": message, "timestamp": utcnow()}])
        except Exception:
            pass  # a log handler must never fail its caller, nor log about itself
        finally:
            self._emitting = False


AUDIT_SOURCE = "audit"


def audit(ingestor, actor, action, text, **fields):
    """One line of the audit trail: a service-log line with source ``audit``, naming who
    (``actor``: a key's name, ``token``, a person) did what. Never give it a secret."""
    attributes = {"actor": actor, "action": action}
    attributes.update({k: v for k, v in fields.items() if v is not None})
    ingestor.submit_nowait([{
        "job_id": None, "step_name": None, "level": LEVELS["info"],
        "message": f"{actor} {text}", "timestamp": utcnow(), "source": AUDIT_SOURCE,
        "attributes": attributes}])
