"""``GET /api/logs/stream``: parse, check, then hand the request to the stream engine
(``quaero/streaming/``). A stream the server cannot take now (stream cap, shutting down,
database away, not under gevent) is answered ``200 text/event-stream`` with only a
jittered ``retry:`` and a comment, then closed: an ``EventSource`` reconnects by itself
and loses nothing."""
import logging

import sqlalchemy as sa
from flask import Blueprint, current_app, request

from ..models import FINISHED, Job, db
from ..queries import newest_id, select_lines
from ..streaming.session import DB_ERRORS, REFUSALS, StreamSession, refusal, track_writes
from ..streaming.sink import open_sink
from ..streaming.subscriber import Subscriber
from .params import check_jobs_exist, db_reading, parse_int, parse_query

log = logging.getLogger("quaero.stream")

bp = Blueprint("stream", __name__, url_prefix="/api")
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _refuse(hub, metrics, reason):
    if reason == "no_gevent" and not hub.refused[reason]:
        log.error("a stream was refused: %s", REFUSALS[reason][0])
    response = current_app.response_class(refusal(hub, metrics, reason),
                                          mimetype="text/event-stream", headers=STREAM_HEADERS)
    response.headers["Connection"] = "close"
    # gunicorn drops an app's Connection header: without this it kept the connection for
    # its keepalive (5 s), one of the worker's connections, and a burst of refusals took
    # the reserve that /healthz, ingest and the next streams' answers need
    req = getattr(request.environ.get("wsgi.input"), "quaero_request", None)
    if req is not None:  # gunicorn.conf.py's pre_request
        req.must_close = True
    return response


def _ended_with_nothing_after(db_conn, f, resume):
    """A resumed stream of jobs that all ended, with no matching line after ``resume``."""
    statuses = db_conn.execute(sa.select(Job.status).where(Job.id.in_(f.job_ids))).scalars()
    if not all(s in FINISHED for s in statuses):
        return False
    lines, _ = select_lines(db_conn, f, after=resume, limit=1)
    return not lines


@bp.get("/logs/stream")
def stream_logs():
    f, limit = parse_query(request.args)
    # both are checked (a bad one is a 400 even beside a good one); the header wins
    header = parse_int(request.headers.get("Last-Event-ID") or None, "Last-Event-ID")
    after = parse_int(request.args.get("after"), "after")
    resume = after if header is None else header
    state = current_app.extensions["quaero"]
    hub = state.hub
    environ = request.environ
    reason = hub.refuse_reason(environ)
    if reason is not None:
        return _refuse(hub, state.metrics, reason)
    try:
        with db_reading() as conn:
            check_jobs_exist(conn, f.job_ids)
            # an id this database never gave (every tab open across a restore from a
            # backup): nothing after it would ever come; start afresh with the tail
            if resume is not None and resume > newest_id(conn):
                resume = None
            if resume is not None and f.job_ids and _ended_with_nothing_after(conn, f, resume):
                return current_app.response_class(status=204)  # tells an EventSource to stop
    except DB_ERRORS:
        return _refuse(hub, state.metrics, "database")
    if request.method == "HEAD":  # headers only: no subscription, no body
        return current_app.response_class(b"", mimetype="text/event-stream",
                                          headers=STREAM_HEADERS)
    cfg = current_app.config
    subscriber = Subscriber(f, hub, cfg["QUAERO_STREAM_BUFFER_BYTES"],
                            environ.get("gunicorn.socket"))
    try:
        hub.subscribe(subscriber)  # before the backfill: nothing falls in between
    except DB_ERRORS:  # the process's first stream reads where the hub starts
        return _refuse(hub, state.metrics, "database")
    # the cap was checked before the reads above, which yield: streams taken meanwhile
    # count now. Without this a burst took every connection of the worker (700 requests,
    # 600 connections: 600 streams over a cap of 540, the other 100 never answered)
    if hub.count > hub.max_streams:
        hub.unsubscribe(subscriber)
        return _refuse(hub, state.metrics, "stream_cap")
    session = StreamSession(subscriber, open_sink(environ), state, db.engine, limit, resume, cfg)
    response = current_app.response_class(track_writes(subscriber, iter(session)),
                                          mimetype="text/event-stream", headers=STREAM_HEADERS)
    # the server closes every response, even one whose body it never started
    response.call_on_close(lambda: hub.unsubscribe(subscriber))
    return response
