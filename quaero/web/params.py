"""Parsing of query strings and JSON bodies for the API: a clean value or a 400."""
import re
import zlib
from datetime import datetime, timezone

import gevent
import sqlalchemy as sa
from flask import current_app, request

from ..attributes import parse_filters
from ..deadline import reading, within
from ..errors import Invalid, JobNotFound, TooLarge
from ..models import LEVEL_CODES, Job
from ..queries import LineFilter
from ..textsearch import MAX_Q
from .jsonio import loads

MAX_JOB_IDS = 50
MAX_NAME = 200
LIMIT_MAX = {"job": 5000, "service": 500}
DEFAULT_LIMIT = 100
_INT = re.compile(r"[0-9]+\Z")
_BIG = 2 ** 62  # ids beyond this cannot exist; keeps parameters inside BIGINT


def db_reading():
    """A database connection for a request's reads, cut off at ``QUAERO_DB_TIMEOUT``."""
    from ..models import db
    return reading(db.engine, current_app.config["QUAERO_DB_TIMEOUT"])


def db_deadline():
    """The request's database work must end within ``QUAERO_DB_TIMEOUT`` (else 503)."""
    return within(current_app.config["QUAERO_DB_TIMEOUT"])


def parse_int(value, name):
    """A non-negative integer from a query string or header, or a 400."""
    if value is None:
        return None
    value = value.strip()
    if not _INT.match(value) or len(value) > 40:
        raise Invalid(f"{name} must be a non-negative integer")
    return min(int(value), _BIG)


def parse_level(value, default="info"):
    code = LEVEL_CODES.get(default if value in (None, "") else value.strip().lower())
    if code is None:
        raise Invalid("level must be one of debug, info, warn, error")
    return code


def parse_query(args):
    """``(LineFilter, limit)`` from the query of the stream and the polling API."""
    scope = args.get("scope")
    if scope not in ("service", "job"):
        raise Invalid("scope must be 'service' or 'job'")
    step = args.get("step")
    job_ids = tuple(dict.fromkeys(j for j in args.getlist("job_id") if j))
    if scope == "service":
        if step is not None:
            raise Invalid("step is only allowed with scope=job")
        if job_ids:
            raise Invalid("job_id is only allowed with scope=job")
    else:
        if not job_ids:
            raise Invalid("job_id is required with scope=job")
        if len(job_ids) > MAX_JOB_IDS:
            raise Invalid(f"at most {MAX_JOB_IDS} job_id values")
        if step == "":
            step = None
    attrs, trace_id = parse_filters(args)
    f = LineFilter(job_ids=job_ids, step=step, min_level=parse_level(args.get("level")),
                   q=parse_q(args.get("q"), required=False),
                   source=parse_source(args.get("source")), attrs=attrs, trace_id=trace_id)
    limit = parse_int(args.get("limit"), "limit")
    limit = DEFAULT_LIMIT if limit is None else min(limit, LIMIT_MAX[scope])
    return f, limit


def parse_search(args, required=True):
    """The filter of ``GET /api/search`` (and of ``scope=all`` of the histogram and the
    facets): every job and the service log, or the ``job_id`` given; ``q`` or an
    ``attr.``/``trace_id`` filter is ``required`` (a search)."""
    job_ids = tuple(dict.fromkeys(j for j in args.getlist("job_id") if j))
    if len(job_ids) > MAX_JOB_IDS:
        raise Invalid(f"at most {MAX_JOB_IDS} job_id values")
    attrs, trace_id = parse_filters(args)
    q = parse_q(args.get("q"), required=required and not (attrs or trace_id))
    return LineFilter(job_ids=job_ids, everywhere=not job_ids, q=q, attrs=attrs,
                      trace_id=trace_id, source=parse_source(args.get("source")),
                      min_level=parse_level(args.get("level"), default="debug"))


def parse_q(value, required=True):
    """Search text: 1 to MAX_Q characters, taken literally (no trimming, no wildcards)."""
    if value is None and not required:
        return None
    if not value or len(value) > MAX_Q or "\x00" in value:
        raise Invalid(f"q must be 1 to {MAX_Q} characters of text")
    return value


def parse_source(value):
    """The ``source=`` filter: the exact name a producer sent (1 to MAX_NAME characters)."""
    if value is None:
        return None
    if not value or len(value) > MAX_NAME or "\x00" in value:
        raise Invalid(f"source must be 1 to {MAX_NAME} characters")
    return value


_JOBS_FOUND = sa.select(Job.__table__.c.id).where(
    Job.__table__.c.id.in_(sa.bindparam("job_ids", expanding=True)))


def check_jobs_exist(conn, job_ids):
    if not job_ids:
        return
    found = set(conn.execute(_JOBS_FOUND, {"job_ids": list(job_ids)}).scalars())
    if len(found) != len(job_ids):
        raise JobNotFound()


READ_CHUNK = 1 << 20


def let_others_run():
    """Give the worker's other greenlets a turn in the middle of long work. A timer, not
    ``sleep(0)``: that runs only greenlets already ready, and the loop then neither polls
    sockets nor fires timers (a stream's ping, a request waiting on its socket)."""
    gevent.sleep(0.0001)


def read_body():
    """The body, at most MAX_CONTENT_LENGTH bytes: werkzeug refuses a larger Content-Length,
    but cuts a chunked body at the limit without a word, so look for one byte more. Read a
    chunk at a time, letting the worker's other requests run in between: a socket that
    always has data never makes a read wait, so one big body would hold the worker."""
    limit = request.max_content_length
    stream = request.stream  # werkzeug's, bounded by Content-Length and the limit
    chunks, size = [], 0
    while True:
        chunk = stream.read(READ_CHUNK)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if len(chunk) == READ_CHUNK:  # more may follow (a body in one read: no turn to give,
            let_others_run()          # and the timer's turn cost every POST 1 ms of waiting)
    data = b"".join(chunks)
    if (request.content_length is None and limit is not None and size >= limit
            and request.environ.get("wsgi.input_terminated")
            and request.environ["wsgi.input"].read(1)):
        raise TooLarge(f"request body too large: at most {limit} bytes per request")
    return data


def gunzip(data, limit):
    """A gzip body inflated, at most ``limit`` bytes of it (413 beyond), or a 400."""
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(data, limit)
    except zlib.error:
        raise Invalid("body is not valid gzip") from None
    if inflater.unconsumed_tail:
        raise TooLarge(f"request body too large: at most {limit} bytes once decompressed")
    if not inflater.eof:
        raise Invalid("body is not valid gzip (truncated)")
    return out


DRAIN_MOST = 1 << 20  # bytes of a refused request's body read before the connection closes


def close_unread_body(response):
    """``after_request``: a refused request (401, 413, ...) is refused on its headers and its
    body is not read. Left unread, gunicorn would drain it before the next request on the
    connection: 2 GB sent as fast as loopback allows never makes a read wait, and the
    worker served nobody else until it was killed. Read at most DRAIN_MOST of it, a chunk
    at a time (so a client that sent a small body still reads its answer), then have
    gunicorn close the connection (``quaero_request``: gunicorn.conf.py's pre_request)."""
    if response.status_code < 400:
        return response
    environ = request.environ
    if not (request.content_length or environ.get("wsgi.input_terminated")
            or "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()):
        return response
    raw = environ.get("wsgi.input")
    drained = 0
    try:
        while drained < DRAIN_MOST:
            chunk = raw.read(65536)
            if not chunk:
                return response
            drained += len(chunk)
            let_others_run()
    except Exception:  # a broken or malformed body: the connection cannot go on
        pass
    req = getattr(raw, "quaero_request", None)
    if req is not None:
        req.must_close = True
    response.headers["Connection"] = "close"
    return response


def json_body():
    """The request's JSON object, or a 400 (a body over MAX_CONTENT_LENGTH is a 413 first)."""
    return json_object(read_body())


def json_object(body):
    """``body`` as a JSON object, or a 400."""
    try:
        data = loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply
        raise Invalid("body must be a JSON object") from None
    if not isinstance(data, dict):
        raise Invalid("body must be a JSON object")
    return data


def plain_text(value, max_len=None):
    """Whether ``clean_text`` takes ``value`` as it is (a string, ASCII, no NUL, within
    ``max_len``): the common case, which a caller can test before naming the field."""
    return (type(value) is str and value.isascii() and "\x00" not in value
            and (max_len is None or 0 < len(value) <= max_len))


def clean_text(value, name, max_len=None):
    if plain_text(value, max_len):
        return value
    if not isinstance(value, str):
        raise Invalid(f"{name} must be a string")
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    if not value.isascii():  # (isascii is a flag: most values skip the encoding test)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates from JSON escapes
            value = value.encode("utf-8", "replace").decode("utf-8")
    if max_len is not None and not 0 < len(value) <= max_len:
        raise Invalid(f"{name} must be 1 to {max_len} characters")
    return value


EARLIEST = datetime(1970, 1, 1)
LATEST = datetime(2200, 1, 1)


def parse_timestamp(value, now):
    """An ISO 8601 time, as UTC without a zone, from 1970 to 2200 (a line dated 9999-12-31
    broke every histogram that covered it), or a 400."""
    if value is None:
        return now
    if not isinstance(value, str) or len(value) > 64:
        raise Invalid("timestamp must be an ISO 8601 string")
    try:
        ts = datetime.fromisoformat(value.strip())
        if ts.tzinfo is not None:
            ts = ts.astimezone(timezone.utc).replace(tzinfo=None)
    except (ValueError, OverflowError):
        raise Invalid("timestamp must be an ISO 8601 string") from None
    if not EARLIEST <= ts < LATEST:
        raise Invalid("timestamp must be between 1970-01-01 and 2200-01-01")
    return ts
