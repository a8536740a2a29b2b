"""The pub/sub bus between the write path and the streams.

In one process it is a pair of blinker signals. A Redis bridge can sit behind the same
three methods (``publish_lines``, ``publish_status``, ``connect``) to carry it between
processes and hosts.
"""
import logging

from blinker import Namespace

log = logging.getLogger("quaero.bus")

_signals = Namespace()
log_lines = _signals.signal("log-lines", doc="Committed log lines, a list of line dicts in id order.")
job_status = _signals.signal("job-status", doc="A job or one of its steps changed; payload is the status event.")


class LocalBus:
    """In-process bus: committed lines and status changes go to local receivers."""

    def __init__(self):
        self._receivers = []  # strong references: blinker would hold them weakly

    def connect(self, on_lines, on_status):
        log_lines.connect(on_lines, sender=self, weak=False)
        job_status.connect(on_status, sender=self, weak=False)
        self._receivers.append((on_lines, on_status))

    def disconnect(self, on_lines, on_status):
        log_lines.disconnect(on_lines, sender=self)
        job_status.disconnect(on_status, sender=self)
        self._receivers.remove((on_lines, on_status))

    def publish_lines(self, lines):
        if lines:
            self._send(log_lines, lines)

    def publish_status(self, payload):
        self._send(job_status, payload)

    def _send(self, signal, payload):
        # One failing receiver must neither reach the producer nor starve the others.
        for receiver in signal.receivers_for(self):
            try:
                receiver(payload)
            except Exception:
                log.exception("bus receiver failed")
