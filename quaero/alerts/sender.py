"""Sending what the evaluator recorded (:class:`Sender`, one greenlet, and one more per
request in flight): pending deliveries, those whose retry is due, and those found
``sending`` that are not in flight here (a stopped evaluator's: their outcome is unknown,
so they go again — the only case a destination may see a notification twice, with the
same idempotency key). A delivery is marked ``sending`` (fenced by the lease) before its
request and its outcome written after; a failure waits for its backoff (``store``)."""
import json
import logging

import gevent

from . import store
from .notify import DeliveryFailed, delivery_key, send

log = logging.getLogger("quaero.alerts")

MAX_IN_FLIGHT = 20
IDLE_LOOK = 3.0   # seconds between looks for work recorded elsewhere (a test from another
                  # worker) or retries come due


class Sender:
    def __init__(self, service):
        self.service = service
        self._in_flight = set()
        from gevent.event import Event
        self.wake = Event()

    def run(self, group):
        """The sender's loop (in the app's ``group``), while the service runs; it sends
        only while the service holds the lease."""
        svc = self.service
        self._group = group
        while not svc.closed and svc.state.started_here():
            timeout = IDLE_LOOK   # woken at once for what this process records
            if svc.holding:
                try:
                    room = MAX_IN_FLIGHT - len(self._in_flight)
                    if room > 0:
                        for row in store.due_deliveries(svc.engine, self._in_flight, room):
                            self._in_flight.add(row.id)
                            group.spawn(self._deliver, row)
                except Exception as exc:
                    log.warning("alert sender: %s", exc.__class__.__name__)
                    timeout = 2.0
            self.wake.wait(timeout)
            self.wake.clear()

    def _deliver(self, row):
        svc = self.service
        error = "not sent"
        try:
            dest = svc.library.destinations.get(row.destination)
            try:
                store.mark_sending(svc.engine, svc.lease, row.id)
            except store.LeaseLost:
                return
            error = None
            if dest is None:
                error = f"destination {row.destination!r} is no longer configured"
            else:
                try:
                    send(dest, json.loads(row.payload), delivery_key(row.key, row.destination),
                         svc.smtp_url, svc.smtp_from)
                except DeliveryFailed as exc:
                    error = str(exc)
                except Exception as exc:
                    error = f"{exc.__class__.__name__}: {exc}"[:300]
            attempts = row.attempts + 1
            if error is not None:
                log.warning("alert delivery to %s failed (attempt %d): %s", row.destination,
                            attempts, error)
                if dest is not None and attempts < store.MAX_ATTEMPTS:   # look again then
                    later = gevent.Greenlet(self.wake.set)
                    self._group.add(later)
                    later.start_later(store.backoff_ms(attempts) / 1000 + 0.05)
            store.mark_outcome(svc.engine, row.id,
                               store.MAX_ATTEMPTS if dest is None else attempts, error)
        except Exception as exc:
            log.warning("alert delivery %s: %s", row.id, exc.__class__.__name__)
        finally:
            self._in_flight.discard(row.id)
            if self._in_flight or error is None:
                self.wake.set()
