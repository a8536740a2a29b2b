"""Sending lines to a Quaero server from anywhere, over HTTP only (no Flask, no gevent).

:class:`LineSender` is the one batching sender: callers ``add`` lines and never wait; a
background thread posts them to ``POST /api/logs`` in batches, keeps at most ``max_lines``
waiting (beyond that lines are dropped and counted), and resends a batch after a network
error or a 429/502/503/504 with growing pauses, until ``close``; a ``prepare`` refused
with another 4xx (a 401: no or a wrong token) is not asked again, and what is added after
it is dropped. A count of dropped lines is sent as a last line. ``quaero exec``/``pipe``
(``quaero.producer``) and :class:`QuaeroHandler` both use it::

    import logging
    from quaero.client import QuaeroHandler
    logging.getLogger().addHandler(QuaeroHandler("http://127.0.0.1:5000", source="billing"))
    logging.getLogger("shop").warning("card declined", extra={"user.id": 42})

A record's ``extra`` fields are the line's attributes (see :func:`record_fields`).
"""
import logging
import signal
import sys
import threading
import time
import uuid
from collections import deque
from datetime import datetime, timezone

import httpx

from .fields import SPAN_DIGITS, TRACE_DIGITS, fit_attributes, hex_id

RETRY_STATUSES = frozenset((429, 502, 503, 504))
TOKEN_MISSING = ("this server needs an API token: pass it with --token or the "
                 "QUAERO_API_TOKEN environment variable")
TOKEN_WRONG = ("the server refused the API token given (--token or QUAERO_API_TOKEN): "
               "it is not the server's QUAERO_API_TOKEN")
MAX_BATCH_LINES = 2000
MAX_BATCH_CHARS = 4 * 1024 * 1024    # well under the server's 32 MiB body limit
MAX_MESSAGE_CHARS = 16384            # at most 64 KiB of UTF-8: the server's line limit


def leave_signals_to_the_main_thread():
    """Called first in a background thread: Ctrl-C and SIGTERM go to the main thread. The
    kernel may deliver a process signal to any thread that does not block it, and then a
    main thread waiting in a system call (``exec`` waiting for its command) is not woken to
    run its handler. Not when threads are gevent's greenlets (an app served by gevent, the
    tests): the "thread" is then the main thread itself, whose mask every child process
    inherits (a SIGTERM-proof redis-server hung the test suite)."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        return
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


class LineSender:
    """Lines out to ``POST /api/logs`` from a background thread; see the module doc.

    ``prepare(client)``, if given, runs on that thread before the first batch (retried
    like a batch) and returns fields added to every line, e.g. the job it created."""

    def __init__(self, url, token=None, fields=None, prepare=None, max_lines=10000,
                 interval=0.1, max_backoff=5.0, transport=None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=url.rstrip("/"), headers=headers,
                                   timeout=httpx.Timeout(10.0, connect=2.0), transport=transport)
        self.fields = dict(fields or {})
        self.prepare = prepare
        self.max_lines = max_lines
        self.interval = interval
        self.max_backoff = max_backoff
        self.dropped = 0
        self.sent = 0
        self.last_error = None
        self.refused = None              # the 4xx that refused ``prepare`` (a 401: the token)
        self._backoff = interval
        self._lines = deque()
        self._wake = threading.Condition()
        self._deadline = None            # set by close(): give up resending after it
        self._thread = threading.Thread(target=self._run, name="quaero-sender", daemon=True)
        self._thread.start()

    def add(self, line):
        """Queue ``line`` (a dict for ``POST /api/logs``); never waits. False if dropped."""
        with self._wake:
            if (len(self._lines) >= self.max_lines or self._deadline is not None
                    or self.refused is not None):
                self.dropped += 1
                return False
            self._lines.append(line)
            if len(self._lines) >= MAX_BATCH_LINES:
                self._wake.notify()
        return True

    def on_sender_thread(self):
        return threading.get_ident() == self._thread.ident

    def close(self, timeout=5.0):
        """Send what is waiting (at most ``timeout`` seconds), then the drop count; True
        if everything was delivered."""
        with self._wake:
            if self._deadline is None:
                self._deadline = time.monotonic() + timeout
            self._wake.notify()
        self._thread.join(max(0.0, self._deadline - time.monotonic()) + 1.0)
        return self.dropped == 0 and not self._lines

    # -- the sender thread ----------------------------------------------------------------

    def _run(self):
        leave_signals_to_the_main_thread()
        try:
            self._send_until_closed()
        finally:
            self.client.close()    # here: its own log records stay on this thread

    def _send_until_closed(self):
        while self.prepare is not None and not self._attempt(self._prepare):
            if self._gave_up():
                self._abandon([])
                return
        while True:
            with self._wake:
                if not self._lines and self._deadline is None:
                    self._wake.wait(self.interval)
                batch = self._take()
                closing = self._deadline is not None
            if batch:
                if not self._deliver(batch):
                    return
            elif closing:
                self._deliver_drop_note()
                return

    def _prepare(self):
        self.fields.update(self.prepare(self.client))
        self.prepare = None

    def _take(self):
        batch, chars = [], 0
        while self._lines and len(batch) < MAX_BATCH_LINES and chars < MAX_BATCH_CHARS:
            line = self._lines.popleft()
            chars += len(line["message"]) + _attributes_chars(line.get("attributes"))
            batch.append({**self.fields, **line})
        return batch

    def _deliver(self, batch):
        """Post ``batch`` until it is stored or refused; False once closing gave up. Every
        attempt carries the batch's one ``Idempotency-Key``: a resend after an answer that
        was lost (a timeout while the server committed) is not stored twice."""
        key = uuid.uuid4().hex
        while not self._attempt(lambda: self._post(batch, key)):
            if self._gave_up():
                self._abandon(batch)
                return False
        return True

    def _abandon(self, batch):
        with self._wake:
            self.dropped += len(batch) + len(self._lines)
            self._lines.clear()

    def _post(self, batch, key):
        r = self.client.post("/api/logs", json={"logs": batch}, headers={"Idempotency-Key": key})
        if r.status_code in RETRY_STATUSES:
            raise httpx.TransportError(f"{r.status_code} from the server")
        if r.status_code >= 400:   # refused for good (a deleted job...): counted, not retried
            self.last_error = f"{r.status_code} {r.text[:300]}"
            self.dropped += len(batch)
            return
        self.sent += len(batch)

    def _deliver_drop_note(self):
        if self.dropped:
            note = {**self.fields, "level": "warn", "timestamp": now_iso(),
                    "message": f"quaero: {self.dropped} lines were dropped (the server was "
                               f"slow or away{': ' + self.last_error if self.last_error else ''})"}
            key = uuid.uuid4().hex
            self._attempt(lambda: self._post([note], key))

    def _attempt(self, action):
        try:
            action()
            self._backoff = self.interval
            return True
        except httpx.HTTPStatusError as exc:
            status = exc.response.status_code
            self.last_error = f"{status} {exc.response.text[:300]}"
            if status < 500 and status not in RETRY_STATUSES:
                self.refused = status    # asking again will not help
                return False
        except httpx.HTTPError as exc:
            self.last_error = f"{exc.__class__.__name__}: {exc}"
        delay = self._backoff
        self._backoff = min(delay * 2, self.max_backoff)
        with self._wake:
            if self._deadline is not None:
                delay = min(delay, max(0.0, self._deadline - time.monotonic()))
            self._wake.wait(delay)
        return False

    def _gave_up(self):
        return self.refused is not None or (
            self._deadline is not None and time.monotonic() >= self._deadline)


def _attributes_chars(attributes):
    """About what a line's attributes add to a batch (up to 16 KiB a line: 2,000 such lines
    would pass the server's body limit)."""
    if not attributes:
        return 0
    return sum(len(k) + (len(v) if isinstance(v, str) else 8) + 8 for k, v in attributes.items())


def now_iso():
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def level_name(levelno):
    """A :mod:`logging` level as one of Quaero's four."""
    return ("debug" if levelno < logging.INFO else "info" if levelno < logging.WARNING
            else "warn" if levelno < logging.ERROR else "error")


# what every LogRecord has: anything else on a record came from ``extra`` (or a record factory)
_RECORD_FIELDS = frozenset(logging.LogRecord("", logging.INFO, "", 0, "", (), None).__dict__) \
    | {"message", "asctime"}
_ID_FIELDS = (("trace_id", "trace_id", TRACE_DIGITS), ("span_id", "span_id", SPAN_DIGITS),
              # opentelemetry-instrumentation-logging's names
              ("otelTraceID", "trace_id", TRACE_DIGITS), ("otelSpanID", "span_id", SPAN_DIGITS))


def record_fields(record):
    """A record's ``attributes`` (its ``extra`` fields, and ``exception.type`` when it has
    an exception) and ``trace_id``/``span_id`` (``extra`` fields of those names, or
    OpenTelemetry's ``otelTraceID``/``otelSpanID``, when they are valid ids), as a dict of
    the line's fields that it has. Values other than strings, numbers and booleans become
    their ``str()``; past the contract's limits attributes are cut (``quaero.fields``)."""
    fields, items = {}, []
    if record.exc_info and record.exc_info[0] is not None:
        items.append(("exception.type", record.exc_info[0].__name__))
    extra = {k: v for k, v in record.__dict__.items()
             if k not in _RECORD_FIELDS and not k.startswith("_")}
    for name, field, digits in _ID_FIELDS:
        value = hex_id(extra.get(name), digits)
        if value is not None:
            fields.setdefault(field, value)
            del extra[name]
    for key, value in extra.items():
        if value is not None and not isinstance(value, (str, int, float, bool)):
            try:
                value = str(value)
            except Exception:  # a broken __str__ costs its field, not the line
                continue
        if value is not None:
            items.append((key, value))
    attributes = fit_attributes(items)
    if attributes:
        fields["attributes"] = attributes
    return fields


class QuaeroHandler(logging.Handler):
    """A :mod:`logging` handler that sends records to Quaero without ever blocking the
    caller: to ``job_id``'s log, else the service log, named ``source``; a record's
    ``extra`` fields go as the line's attributes (:func:`record_fields`)."""

    def __init__(self, url, token=None, job_id=None, source=None, *, max_lines=10000,
                 close_timeout=5.0, level=logging.NOTSET):
        super().__init__(level)
        fields = {"job_id": job_id, "source": source}
        self.sender = LineSender(url, token, {k: v for k, v in fields.items() if v},
                                 max_lines=max_lines)
        self.close_timeout = close_timeout

    @property
    def dropped(self):
        return self.sender.dropped

    def emit(self, record):
        if self.sender.on_sender_thread():  # httpx's own records: never a feedback loop
            return
        try:
            message = self.format(record)
            stamp = datetime.fromtimestamp(record.created, timezone.utc)
            fields = record_fields(record)
            for start in range(0, max(len(message), 1), MAX_MESSAGE_CHARS):
                self.sender.add({"level": level_name(record.levelno),
                                 "message": message[start:start + MAX_MESSAGE_CHARS],
                                 "timestamp": stamp.isoformat(timespec="milliseconds"),
                                 **fields})
        except Exception:
            self.handleError(record)

    def close(self):
        """Flush within ``close_timeout`` seconds; what is still unsent then is dropped."""
        try:
            if not self.sender.close(self.close_timeout) and self.sender.last_error:
                print(f"QuaeroHandler: {self.sender.dropped} lines not delivered "
                      f"({self.sender.last_error})", file=sys.stderr)
        finally:
            super().close()
