"""The pub/sub bus between the write path and the streams.

In one process it is a few blinker signals (:class:`LocalBus`). :class:`RedisBus` has the
same methods (``publish_lines``, ``publish_status``, ``connect``) and carries the bus
between processes and hosts. Receivers take the payload as their only argument.
"""
import json
import logging
from collections import deque

import gevent
from blinker import Namespace

log = logging.getLogger("quaero.bus")

_signals = Namespace()
log_lines = _signals.signal("log-lines", doc="Committed log lines, a list of line dicts in id order.")
job_status = _signals.signal("job-status", doc="A job or one of its steps changed; payload is the status event.")
line_range = _signals.signal("line-range", doc="Lines (first_id, last_id) committed elsewhere, too big to carry; read them from the database.")


class LocalBus:
    """In-process bus: committed lines and status changes go to local receivers."""

    def __init__(self):
        self._receivers = []  # strong references: blinker would hold them weakly

    def start(self, group):
        """Nothing runs in the background in one process."""

    def stop(self):
        pass

    def connect(self, on_lines, on_status, on_range=None):
        log_lines.connect(on_lines, sender=self, weak=False)
        job_status.connect(on_status, sender=self, weak=False)
        if on_range is not None:
            line_range.connect(on_range, sender=self, weak=False)
        self._receivers.append((on_lines, on_status, on_range))

    def disconnect(self, on_lines, on_status, on_range=None):
        log_lines.disconnect(on_lines, sender=self)
        job_status.disconnect(on_status, sender=self)
        if on_range is not None:
            line_range.disconnect(on_range, sender=self)
        self._receivers.remove((on_lines, on_status, on_range))

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


def redact(url):
    """``url`` without its password, fit for a log line."""
    from urllib.parse import urlsplit, urlunsplit
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def deployment_channel(engine):
    """The Redis channel of the deployment whose database is ``engine``'s: named for a
    random id the database keeps (``models.DEPLOYMENT_KEY``), so two deployments that share
    one Redis (pub/sub ignores the database number) never see each other's messages,
    while every worker and host of one deployment meets on it."""
    from .models import deployment_id
    return f"quaero:{deployment_id(engine):x}:bus"


class RedisBus(LocalBus):
    """The local bus, bridged to other processes and hosts through Redis pub/sub.

    Publishing delivers locally at once and queues the message for Redis (bounded, from
    a greenlet of its own: a slow or absent Redis never holds up a commit). One
    subscriber connection per process feeds what other processes publish into the local
    signals. Redis pub/sub may lose messages while a connection is down; the stream hub
    notices the gap in ids and reads the missing lines from the database, and its
    database watcher covers the time Redis is away.
    """

    MAX_INLINE_BYTES = 1 << 20  # bigger batches travel as an id range, read from the database
    MAX_QUEUED = 10000

    def __init__(self, url, channel):
        super().__init__()
        import uuid
        self.url = url
        self.channel = channel
        self.origin = uuid.uuid4().hex
        self._outbox = deque()
        from gevent.event import Event
        self._wake = Event()
        self._stopped = True   # until start(): messages wait in the (bounded) outbox
        self._connected = False
        self._ever_connected = False
        self._last_error = "not connected yet"

    # -- publishing ---------------------------------------------------------------------

    def publish_lines(self, lines):
        if not lines:
            return
        super().publish_lines(lines)
        self._enqueue({"t": "lines", "lines": lines})

    def publish_status(self, payload):
        super().publish_status(payload)
        self._enqueue({"t": "status", "payload": payload})

    def _enqueue(self, message):
        if len(self._outbox) >= self.MAX_QUEUED:
            self._outbox.popleft()  # the hub's database watcher still delivers it
        self._outbox.append(message)
        self._wake.set()

    def start(self, group):
        """The publisher and subscriber greenlets, in the app's ``group``."""
        self._stopped = False
        group.spawn(self._publisher)
        group.spawn(self._subscriber)

    def stop(self):
        """Both loops end (the subscriber within its 1-s read); the app's group is killed
        after."""
        self._stopped = True
        self._wake.set()

    def _client(self):
        import redis
        return redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=2,
                                    health_check_interval=10)

    def _publisher(self):
        client = self._client()
        while not self._stopped:
            self._wake.wait()
            self._wake.clear()
            while self._outbox:
                message = self._outbox[0]
                data = self._encode(message)
                try:
                    client.publish(self.channel, data)
                    self._outbox.popleft()
                except Exception as exc:
                    self._down(exc)
                    self._outbox.clear()  # receivers recover from the database
                    gevent.sleep(1)

    def _encode(self, message):
        message = dict(message, o=self.origin)
        data = json.dumps(message, separators=(",", ":"))
        if len(data) > self.MAX_INLINE_BYTES and message["t"] == "lines":
            lines = message["lines"]
            data = json.dumps({"t": "range", "o": self.origin, "first": lines[0]["id"],
                               "last": lines[-1]["id"]})
        return data

    # -- subscribing --------------------------------------------------------------------

    def _subscriber(self):
        delay = 0.2
        while not self._stopped:
            try:
                pubsub = self._client().pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.channel)
                self._connected, self._last_error, delay = True, None, 0.2
                self._ever_connected = True
                log.info("redis bus connected to %s", redact(self.url))
                while not self._stopped:
                    raw = pubsub.get_message(timeout=1.0)
                    if raw is not None:
                        self._receive(raw)
            except Exception as exc:
                self._down(exc)
            gevent.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _down(self, exc):
        # Said once per outage, not per retry: loudly when Redis never answered (a wrong
        # URL or a Redis that is not running), as a warning when a working one went away.
        if not self._ever_connected and self._last_error == "not connected yet":
            log.error("QUAERO_REDIS_URL %s does not answer (%s: %s): live delivery between "
                      "processes falls back to reading the database until it does",
                      redact(self.url), exc.__class__.__name__, exc)
        elif self._connected:
            log.warning("redis bus at %s unavailable (%s); streams fall back to the database",
                        redact(self.url), exc.__class__.__name__)
        self._connected = False
        self._last_error = f"error: {exc.__class__.__name__}"

    def _receive(self, raw):
        if raw.get("type") != "message":
            return
        message = json.loads(raw["data"])
        if message.get("o") == self.origin:
            return
        kind = message.get("t")
        if kind == "lines":
            super().publish_lines(message["lines"])
        elif kind == "status":
            super().publish_status(message["payload"])
        elif kind == "range":
            self._send(line_range, (message["first"], message["last"]))

    def health(self):
        if self._connected:
            return "ok"
        return self._last_error or "error"
