"""The logs API: ingest (``POST /api/logs``), the polling reads and the text download.
The stream is in ``stream.py`` beside it."""
import hashlib
import re
from datetime import datetime, timezone

import sqlalchemy as sa
from flask import Blueprint, Response, current_app, jsonify, request

from ..attributes import MAX_KEY as MAX_ATTR_KEY
from ..attributes import SPAN_DIGITS, TRACE_DIGITS, clean_attributes, clean_hex_id
from ..errors import Conflict, Invalid, NotFound, TooLarge
from ..ingest import KeyTaken, accepted_body
from ..storage import IDEMPOTENCY_TTL
from ..models import LEVELS, LEVEL_ALIASES, Job, Step, db, idempotency_t, utcnow
from ..facets import facet_counts
from ..queries import LineFilter, count_matches, select_lines
from .params import (MAX_NAME, check_jobs_exist, clean_text, db_reading, json_object,
                     let_others_run, parse_int, parse_query, parse_search, parse_timestamp,
                     read_body)

bp = Blueprint("logs", __name__, url_prefix="/api")  # auth: web.auth, for all of /api

MAX_MESSAGE_BYTES = 65536
MAX_LINES_PER_REQUEST = 10000


@bp.post("/logs")
def post_logs():
    key = idempotency_key()
    body = read_body()
    digest = hashlib.sha256(body).hexdigest() if key else None
    if key:
        replay = _answered(key, digest)
        if replay is not None:
            return replay
    data = json_object(body)
    items = data.get("logs")
    if not isinstance(items, list) or not items:
        raise Invalid("logs must be a non-empty list")
    if len(items) > MAX_LINES_PER_REQUEST:
        raise TooLarge(f"at most {MAX_LINES_PER_REQUEST} lines per request")
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    lines = [clean_line(item, f"logs[{i}]", now) for i, item in enumerate(items)]
    stored = store_lines(lines, key, digest)
    if isinstance(stored, Response):
        return stored
    first_id, last_id = stored
    return Response(accepted_body(len(lines), first_id, last_id), 201,
                    mimetype="application/json")


def clean_line(item, where, now):
    """One line of a request (``where`` names it in a 400) as the write path takes it."""
    if not isinstance(item, dict):
        raise Invalid(f"{where} must be an object")
    level = item.get("level")
    if not isinstance(level, str):
        raise Invalid(f"{where}.level is required")
    level = level.lower()
    level = LEVEL_ALIASES.get(level, level)
    if level not in LEVELS:
        raise Invalid(f"{where}.level must be one of debug, info, warn, error")
    if "message" not in item:
        raise Invalid(f"{where}.message is required")
    message = clean_text(item["message"], f"{where}.message")
    if len(message) * 4 > MAX_MESSAGE_BYTES and len(message.encode("utf-8")) > MAX_MESSAGE_BYTES:
        raise TooLarge(f"{where}.message is over {MAX_MESSAGE_BYTES} bytes")
    job_id, step = item.get("job_id"), item.get("step")
    if job_id is not None and not isinstance(job_id, str):
        raise Invalid(f"{where}.job_id must be a string")
    if step is not None:
        step = clean_text(step, f"{where}.step", MAX_NAME)
        if not job_id:
            raise Invalid(f"{where}.step needs a job_id")
    source = item.get("source")
    if source is not None and source != "":
        source = clean_text(source, f"{where}.source", MAX_NAME)
    return {"job_id": job_id or None, "step_name": step, "level": LEVELS[level],
            "message": message, "timestamp": parse_timestamp(item.get("timestamp"), now),
            "source": source or None,
            "attributes": clean_attributes(item.get("attributes"), f"{where}.attributes"),
            "trace_id": clean_hex_id(item.get("trace_id"), f"{where}.trace_id", TRACE_DIGITS),
            "span_id": clean_hex_id(item.get("span_id"), f"{where}.span_id", SPAN_DIGITS)}


def store_lines(lines, key=None, digest=None):
    """Commit validated ``lines`` (``clean_line``) all together through the one write path:
    ``(first_id, last_id)``, or the recorded answer (a Response) when another request with
    the same ``Idempotency-Key`` was stored first. 404 for an unknown job or step."""
    _check_targets({(line["job_id"], line["step_name"]) for line in lines})
    try:
        return current_app.extensions["quaero"].ingestor.submit(
            lines, key=(key, digest) if key else None)
    except KeyTaken:  # the same key, sent again while the first was being stored
        replay = _answered(key, digest)
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


def _answered(key, digest):
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
    if any(len(j) > 32 for j in job_ids):
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


@bp.get("/logs")
def get_logs():
    f, limit = parse_query(request.args)
    after = parse_int(request.args.get("after"), "after")
    before = parse_int(request.args.get("before"), "before")
    with db_reading() as conn:
        check_jobs_exist(conn, f.job_ids)
        lines, more = select_lines(conn, f, after=after, before=before, limit=limit)
        total, capped = count_matches(conn, f)
        if not lines and after is not None:
            from ..queries import newest_id
            # an id beyond the newest (a database restored from a backup): a client that
            # resumed from it would wait for good; it resumes from the newest instead
            after = min(after, newest_id(conn))
    if lines:
        last_id = lines[-1]["id"]
    else:
        last_id = after if after is not None else None
    meta = {"total_count": total, "displayed_count": len(lines), "has_more": more}
    if capped:
        meta["total_count_capped"] = True
    return jsonify(logs=lines, last_id=last_id, meta=meta)


FACETS_LIMIT = 100


@bp.get("/logs/facets")
def get_facets():
    """The most frequent values of one attribute (or of source, level, step) among the
    lines the query's filters match: ``{"key", "values": [{"value", "count"}], "total"}``,
    counted over the newest 100,000 of them (``"sampled": true`` when there were more)."""
    args = request.args
    f = parse_search(args, required=False) if args.get("scope") == "all" else parse_query(args)[0]
    key = args.get("key")
    if not key or len(key) > MAX_ATTR_KEY or "\x00" in key:
        raise Invalid(f"key must be an attribute name (1 to {MAX_ATTR_KEY} characters), "
                      "source, level or step")
    limit = parse_int(args.get("limit"), "limit")
    limit = 10 if limit is None else limit
    if not 1 <= limit <= FACETS_LIMIT:
        raise Invalid(f"limit must be 1 to {FACETS_LIMIT}")
    with db_reading() as conn:
        check_jobs_exist(conn, f.job_ids)
        values, total, sampled = facet_counts(conn, f, key, limit)
    if sampled:  # counted over the newest FACET_SCAN matching lines only
        return jsonify(key=key, values=values, total=total, sampled=True)
    return jsonify(key=key, values=values, total=total)


@bp.get("/jobs/<job_id>/logs.txt")
def job_logs_txt(job_id):
    f = LineFilter(job_ids=(job_id,), min_level=LEVELS["debug"])
    engine = db.engine
    with db_reading() as conn:
        check_jobs_exist(conn, f.job_ids)

    def pages():
        after = 0
        while True:
            with engine.connect() as conn:  # a fresh connection per page: none held across
                lines, more = select_lines(conn, f, after=after, limit=5000)
            if lines:
                yield "".join(format_text_line(line) for line in lines)
                after = lines[-1]["id"]
            if not more:
                return
            let_others_run()  # formatting a page holds the worker: others run between

    return Response(pages(), mimetype="text/plain", headers={
        "Content-Disposition": f'attachment; filename="job-{job_id}.log"'})


def format_text_line(line):
    step = f" [{line['step_name']}]" if line["step_name"] else ""
    message = line["message"].replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\n    ")
    return f"{line['timestamp']} {line['level'].upper():5}{step} {message}\n"
