"""Lines coming in: one request's lines validated (``clean_line``) and committed through
the one write path (``store_lines``), with ``Idempotency-Key`` records, for every way
lines get in over HTTP (``POST /api/logs``, the Loki push API)."""
import re

import sqlalchemy as sa
from flask import Response, current_app, request

from ..attributes import SPAN_DIGITS, TRACE_DIGITS, clean_attributes, clean_hex_id
from ..errors import Conflict, Invalid, NotFound, TooLarge
from ..ingest import KeyTaken
from ..models import LEVEL_CODES, Job, Step, idempotency_t, utcnow
from ..storage import IDEMPOTENCY_TTL
from .auth import check_line_targets
from .params import MAX_NAME, clean_text, db_reading, parse_timestamp, plain_text

MAX_MESSAGE_BYTES = 65536
MAX_LINES_PER_REQUEST = 10000


def _at(where):
    """The name of a line in a 400: ``where`` as given, or ``(list, index)`` formatted
    (only when there is an error to name it in)."""
    return where if isinstance(where, str) else f"{where[0]}[{where[1]}]"


def clean_lines(items, name, now):
    """``clean_line`` of each item of the request's list ``name``."""
    return [clean_line(item, (name, i), now) for i, item in enumerate(items)]


def clean_line(item, where, now):
    """One line of a request as the write path takes it; ``where`` names it in a 400
    (a string, or ``(list, index)``)."""
    if not isinstance(item, dict):
        raise Invalid(f"{_at(where)} must be an object")
    level = item.get("level")
    if not isinstance(level, str):
        raise Invalid(f"{_at(where)}.level is required")
    code = LEVEL_CODES.get(level)
    if code is None:
        code = LEVEL_CODES.get(level.lower())
        if code is None:
            raise Invalid(f"{_at(where)}.level must be one of debug, info, warn, error")
    message = item.get("message", _MISSING)
    if message is _MISSING:
        raise Invalid(f"{_at(where)}.message is required")
    if not plain_text(message):
        message = clean_text(message, f"{_at(where)}.message")
    if len(message) * 4 > MAX_MESSAGE_BYTES and len(message.encode("utf-8")) > MAX_MESSAGE_BYTES:
        raise TooLarge(f"{_at(where)}.message is over {MAX_MESSAGE_BYTES} bytes")
    job_id, step = item.get("job_id"), item.get("step")
    if job_id is not None and not isinstance(job_id, str):
        raise Invalid(f"{_at(where)}.job_id must be a string")
    if step is not None:
        if not plain_text(step, MAX_NAME):
            step = clean_text(step, f"{_at(where)}.step", MAX_NAME)
        if not job_id:
            raise Invalid(f"{_at(where)}.step needs a job_id")
    source = item.get("source")
    if source is not None and source != "" and not plain_text(source, MAX_NAME):
        source = clean_text(source, f"{_at(where)}.source", MAX_NAME)
    timestamp = item.get("timestamp")
    timestamp = now if timestamp is None else parse_timestamp(timestamp, now)
    fields, trace, span = item.get("attributes"), item.get("trace_id"), item.get("span_id")
    if fields is not None:  # (a field not sent: no call, no name built)
        fields = clean_attributes(fields, f"{_at(where)}.attributes")
    if trace is not None:
        trace = clean_hex_id(trace, f"{_at(where)}.trace_id", TRACE_DIGITS)
    if span is not None:
        span = clean_hex_id(span, f"{_at(where)}.span_id", SPAN_DIGITS)
    return {"job_id": job_id or None, "step_name": step, "level": code,
            "message": message, "timestamp": timestamp,
            "source": source or None, "attributes": fields, "trace_id": trace, "span_id": span}


_MISSING = object()


def store_lines(lines, key=None, digest=None):
    """Commit validated ``lines`` (``clean_line``) all together through the one write path:
    ``(first_id, last_id)``, or the recorded answer (a Response) when another request with
    the same ``Idempotency-Key`` was stored first. 404 for an unknown job or step; 403
    for a job outside the caller's key's job pattern."""
    _check_targets({(line["job_id"], line["step_name"]) for line in lines})
    check_line_targets(lines)
    try:
        return current_app.extensions["quaero"].ingestor.submit(
            lines, key=(key, digest) if key else None)
    except KeyTaken:  # the same key, sent again while the first was being stored
        replay = answered(key, digest)
        if replay is None:
            raise Conflict("a request with this Idempotency-Key is in progress; "
                           "retry") from None
        return replay


_KEY = re.compile(r"[\x21-\x7e]{1,128}\Z")
_RECORD = (sa.select(idempotency_t.c.digest, idempotency_t.c.status, idempotency_t.c.response)
           .where(idempotency_t.c.key == sa.bindparam("key"),
                  idempotency_t.c.created_at >= sa.bindparam("since")))


def idempotency_key():
    """The request's ``Idempotency-Key`` (1-128 visible ASCII characters), or None."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not _KEY.match(key):
        raise Invalid("Idempotency-Key must be 1 to 128 visible ASCII characters")
    return key


def answered(key, digest):
    """The recorded answer to an earlier request with ``key`` (seen in the last 24 hours),
    a 409 if that request had another body, or None."""
    with db_reading() as conn:
        row = conn.execute(_RECORD, {"key": key, "since": utcnow() - IDEMPOTENCY_TTL}).first()
    if row is None:
        return None
    if row.digest != digest:
        raise Conflict("this Idempotency-Key was used for a request with another body")
    return Response(row.response, row.status, mimetype="application/json")


_TARGETS = (sa.select(Job.id, Step.name).outerjoin(Step, Step.job_id == Job.id)
            .where(Job.id.in_(sa.bindparam("job_ids", expanding=True))))
MAX_KNOWN_TARGETS = 100000


def _check_targets(wanted):
    """404 for a job or step that does not exist. Targets seen before are not asked
    again (``Ingestor.known_targets``): the writer refuses a job removed since."""
    known = current_app.extensions["quaero"].ingestor.known_targets
    unknown = {(j, s) for j, s in wanted if j and (j, s) not in known}
    if not unknown:
        return
    job_ids = {j for j, _ in unknown}
    if any(len(j) > 32 or "\x00" in j for j in job_ids):  # no job has such an id
        raise NotFound("job not found")
    with db_reading() as conn:  # no transaction held while the writer commits
        rows = conn.execute(_TARGETS, {"job_ids": list(job_ids)}).all()
    jobs_found = {j for j, _ in rows}
    steps_found = {(j, s) for j, s in rows}
    if len(known) > MAX_KNOWN_TARGETS:
        known.clear()
    known.update(steps_found)
    known.update((j, None) for j in jobs_found)
    for job_id, step in unknown:  # (a known target was found before: it needs no check)
        if job_id not in jobs_found:
            raise NotFound(f"job {job_id} not found")
        if step is not None and (job_id, step) not in steps_found:
            raise NotFound(f"step {step!r} not found in job {job_id}")
