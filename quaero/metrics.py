"""Prometheus metrics, in a registry of the app's own (tests create many apps).

Under gunicorn, ``gunicorn.conf.py`` sets ``PROMETHEUS_MULTIPROC_DIR`` in the master before
the workers fork: prometheus-client then keeps every value in a file per worker there, and
``/metrics`` (:func:`exposition`) adds up all workers' files, so any worker answers for the
whole server. Without it (the Flask test client, an embedded app) the values live in this
registry, as before."""
import os

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.streams_open = Gauge("quaero_sse_streams_open", "Open SSE streams", ["scope"], registry=r,
                                  multiprocess_mode="livesum")  # a dead worker's streams closed
        for scope in ("service", "job"):
            self.streams_open.labels(scope)
        self.lines_ingested = Counter("quaero_log_lines_ingested", "Log lines committed", registry=r)
        self.lines_delivered = Counter("quaero_log_lines_delivered",
                                       "Log lines written to stream clients", registry=r)
        self.events_sent = Counter("quaero_sse_events_sent", "SSE events sent", ["event"], registry=r)
        self.bytes_sent = Counter("quaero_sse_bytes_sent", "SSE bytes sent", registry=r)
        self.slow_dropped = Counter("quaero_sse_slow_clients_dropped",
                                    "Streams closed because the client's socket took nothing "
                                    "for QUAERO_STREAM_STALL_SECONDS", registry=r)
        self.fell_behind = Counter("quaero_sse_streams_fell_behind",
                                   "Times a stream's queue passed QUAERO_STREAM_BUFFER_BYTES and "
                                   "it read its backlog from the database", registry=r)
        self.streams_refused = Counter(
            "quaero_sse_streams_refused",
            "Streams answered with only a retry: (stream_cap, shutting_down, database, no_gevent)",
            ["reason"], registry=r)
        self.service_lines_dropped = Counter(
            "quaero_service_log_lines_dropped",
            "Service/step log lines dropped because too many were waiting to be written", registry=r)
        self.ingest_seconds = Histogram("quaero_ingest_seconds", "Time to commit one ingest batch",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.delivery_seconds = Histogram("quaero_delivery_seconds",
                                          "From commit to the write of a logs event",
                                          buckets=LATENCY_BUCKETS, registry=r)


def exposition(registry):
    """``(body, content type)`` for ``/metrics``: every worker's values when running with
    ``PROMETHEUS_MULTIPROC_DIR``, else this app's ``registry``."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST
